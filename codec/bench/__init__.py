"""The benchmark: classical codecs and MoEC cells at the same ratio, and the report written from them."""
