"""Building blocks: norms, rotary embeddings, parallel linears, paged attention."""
