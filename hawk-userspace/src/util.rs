//! Small parsers shared by the command line and the daemon (durations).
