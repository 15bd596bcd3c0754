"""One module (or package) per family of formats: its blocks' bit layout, decoders,
unpackers and row dots. kernels/traits.py names them in one record per type."""
