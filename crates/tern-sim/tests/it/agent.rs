//! Agent behaviour on the flash model: offer checks and block handling.
