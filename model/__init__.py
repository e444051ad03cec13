"""The model side: the Google Product Taxonomy and the multi-head classifier built on it."""
