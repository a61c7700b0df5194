//! `hawk-ebpf check`: one line per kernel feature or privilege.

use crate::collector::check::run_checks;

/// Prints the checks; returns false when `record` cannot work here.
pub fn run() -> bool {
    let mut usable = true;
    for check in run_checks() {
        let mark = match (check.ok, check.required) {
            (true, _) => "ok  ",
            (false, true) => "FAIL",
            (false, false) => "no  ",
        };
        println!("{mark} {:<12} {}", check.name, check.detail);
        usable &= check.ok || !check.required;
    }
    if usable {
        println!("record: can run here");
    } else {
        println!("record: cannot run here (see FAIL above)");
    }
    usable
}
