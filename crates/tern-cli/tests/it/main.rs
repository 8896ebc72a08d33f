//! Integration tests of the `tern` command (one binary; see STYLE.md).

mod mcuboot;
