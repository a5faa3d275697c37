"""The synthetic EmoVox set, written in the real on-disk formats (docs/design.md §3.4)."""
