//! Integration tests of the `tern` command (one binary; see STYLE.md).

mod delta;
mod hex;
mod inspect;
mod mcuboot;
mod ops;
mod particle_oracle;
mod release;
mod sim;
mod support;
