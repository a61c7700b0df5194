//! The interactive SVG flamegraph (inferno), drawn from the folded lines.
//!
//! CPU profiles use inferno's `perl` palette: it is the one whose rules fit
//! native stacks. Kernel frames (`_[k]`) are orange, C++/Rust frames
//! (containing `::`) yellow, other user frames red. (The default `hot`
//! palette ignores `_[k]`, and the `java` palette would paint every
//! `libc.so.6+0x…` or capitalised name green as Java.) Colours come from a
//! hash of the name, so a function keeps its colour across profiles.
//! Memory profiles use the `mem` palette. Frames narrower than 0.1% are
//! pruned, as flamegraph.pl does. An empty profile renders a small SVG that
//! says no samples were collected, instead of inferno's error.

use inferno::flamegraph::color::{BasicPalette, MultiPalette};
use inferno::flamegraph::{self, Options, Palette};

use crate::profile::{Profile, ProfileKind};

use super::{RenderError, folded};

/// Width of the empty-profile SVG (inferno's default image width).
const EMPTY_WIDTH: u32 = 1200;

/// Renders `profile` as an SVG flamegraph titled `title`.
pub fn render(profile: &Profile, title: &str) -> Result<Vec<u8>, RenderError> {
    let lines = folded::lines(profile);
    if lines.is_empty() {
        return Ok(empty(profile, title));
    }
    let kind = profile.metadata.kind;
    let mut options = Options::default();
    options.title = title.to_string();
    options.subtitle = subtitle(profile);
    options.count_name = kind.unit().to_string();
    options.colors = match kind {
        ProfileKind::Cpu => Palette::Multi(MultiPalette::Perl),
        ProfileKind::Mem => Palette::Basic(BasicPalette::Mem),
    };
    options.hash = true;
    let mut out = Vec::new();
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut out)
        .map_err(RenderError::Flamegraph)?;
    Ok(out)
}

/// A line about what the profile misses, when it misses anything: lost
/// stacks, dropped samples, unsymbolized frames, processes without maps.
fn subtitle(profile: &Profile) -> Option<String> {
    let s = &profile.metadata.stats;
    let parts: Vec<String> = [
        (s.lost_stacks, "stack lost", "stacks lost"),
        (
            s.dropped_samples,
            "sample dropped (map full)",
            "samples dropped (map full)",
        ),
        (
            s.unsymbolized_frames,
            "frame without symbol",
            "frames without symbols",
        ),
        (
            s.unmapped_processes,
            "process exited before its maps were read",
            "processes exited before their maps were read",
        ),
    ]
    .into_iter()
    .filter(|(n, _, _)| *n > 0)
    .map(|(n, one, many)| format!("{n} {}", if n == 1 { one } else { many }))
    .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// Escapes text for XML character data and attribute values.
fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The SVG of a profile without samples: its title and a sentence.
fn empty(profile: &Profile, title: &str) -> Vec<u8> {
    let message = match profile.metadata.kind {
        ProfileKind::Cpu => "No samples were collected in this window.",
        ProfileKind::Mem => "No allocations were recorded in this window.",
    };
    let mid = EMPTY_WIDTH / 2;
    format!(
        r##"<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="{EMPTY_WIDTH}" height="90" viewBox="0 0 {EMPTY_WIDTH} 90" xmlns="http://www.w3.org/2000/svg">
<rect x="0" y="0" width="100%" height="100%" fill="#eeeeee"/>
<text id="title" x="{mid}" y="30" text-anchor="middle" font-family="Verdana" font-size="17">{}</text>
<text id="message" x="{mid}" y="65" text-anchor="middle" font-family="Verdana" font-size="12">{message}</text>
</svg>
"##,
        xml_escape(title)
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{default_title, testutil};

    fn svg(profile: &Profile) -> String {
        String::from_utf8(render(profile, &default_title(profile)).unwrap()).unwrap()
    }

    /// The text of every `<title>` element (inferno's frame tooltips).
    fn tooltips(svg: &str) -> Vec<&str> {
        svg.split("<title>")
            .skip(1)
            .filter_map(|rest| rest.split_once("</title>").map(|(t, _)| t))
            .collect()
    }

    #[test]
    fn draws_every_frame_with_its_count() {
        let text = svg(&testutil::cpu_profile());
        assert!(text.starts_with("<?xml"), "{}", &text[..100]);
        assert!(text.contains("<svg"));
        assert!(text.trim_end().ends_with("</svg>"));
        assert!(text.contains(
            "Hawk CPU profile of trace 4bf92f3577b34da6a3ce929d0e0e4736 — 10.0 s at 99 Hz, 92 samples"
        ));
        assert!(
            text.contains("2 stacks lost, 1 sample dropped (map full), 4 frames without symbols")
        );
        let tips = tooltips(&text);
        for expected in [
            "all (92 samples, 100%)",
            "cpu_split (4242) (83 samples, 90.22%)",
            "hot_a (50 samples, 54.35%)",
            "hot_b (25 samples, 27.17%)",
            "std::vec::Vec&lt;[u8: 8]&gt;::push (5 samples, 5.43%)",
            // inferno draws `_[k]` frames without the suffix (the colour shows it).
            "vfs_write (3 samples, 3.26%)",
            "swapper/0 (0) (7 samples, 7.61%)",
            "do_idle (7 samples, 7.61%)",
            "libc.so.6+0x11a2b3 (2 samples, 2.17%)",
        ] {
            assert!(tips.contains(&expected), "{expected:?} not in {tips:#?}");
        }
        assert!(!text.contains("ignored"));
        assert!(!text.contains("_[k]"));
    }

    #[test]
    fn kernel_frames_are_orange_and_user_frames_are_not() {
        let text = svg(&testutil::cpu_profile());
        // inferno writes each frame as <g><title>…</title><rect … fill="rgb(r,g,b)" …/>.
        let fill_of = |name: &str| -> (u8, u8, u8) {
            let start = text.find(&format!("<title>{name} (")).unwrap();
            let rest = &text[start..];
            let rgb = rest.split("fill=\"rgb(").nth(1).unwrap();
            let rgb = &rgb[..rgb.find(')').unwrap()];
            let v: Vec<u8> = rgb.split(',').map(|c| c.trim().parse().unwrap()).collect();
            (v[0], v[1], v[2])
        };
        for kernel in ["do_idle", "vfs_write", "ksys_write"] {
            // inferno's orange: red 190..255, green 90..155, blue 0.
            let (r, g, b) = fill_of(kernel);
            assert!(
                r >= 190 && (90..=155).contains(&g) && b == 0,
                "{kernel}: {r},{g},{b}"
            );
        }
        for user in ["hot_a", "main", "libc.so.6+0x11a2b3"] {
            // inferno's red: green 50..130, blue == green.
            let (r, g, b) = fill_of(user);
            assert!(r >= 200 && g == b && g <= 130, "{user}: {r},{g},{b}");
        }
    }

    #[test]
    fn memory_profiles_count_bytes() {
        let text = svg(&testutil::mem_profile());
        let tips = tooltips(&text);
        assert!(tips.contains(&"all (78,848 bytes, 100%)"), "{tips:#?}");
        assert!(
            tips.contains(&"realloc (65,536 bytes, 83.12%)"),
            "{tips:#?}"
        );
        assert!(text.contains("Hawk memory profile — 2.5 s, 78848 bytes"));
        assert!(!text.contains(" samples"));
    }

    #[test]
    fn an_empty_profile_says_so() {
        let mut p = testutil::cpu_profile();
        p.samples.clear();
        let text = svg(&p);
        assert!(text.contains("<svg") && text.trim_end().ends_with("</svg>"));
        assert!(text.contains("No samples were collected in this window."));
        assert!(text.contains("0 samples"));
        let text = String::from_utf8(render(&p, "a & <b>").unwrap()).unwrap();
        assert!(text.contains(">a &amp; &lt;b&gt;</text>"));
    }
}
