//! Integration tests of the `tern` command (one binary; see STYLE.md).

mod hex;
mod mcuboot;
mod release;
mod support;
