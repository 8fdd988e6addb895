"""Where captures are kept: snapshot directories of Parquet frames and a manifest."""
