//! Integration tests of tern-image (one binary; see STYLE.md).

mod fuzz_corpus;
