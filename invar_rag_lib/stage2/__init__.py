"""Stage 2: the generator adapter, prompts, prefix-cached decoding and the end-to-end rows."""

# The generation rows of docs/method.md §2, in table order (kept here, free of heavy imports, so the
# report code can order rows without loading a model).
ROWS = ("closed-book", "bm25-rag", "minilm-rag", "invar-retrieval", "invar-rag")
