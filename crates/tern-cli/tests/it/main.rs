//! Integration tests of the `tern` binary, compiled as one test binary.

mod inspect;
mod particle_oracle;
