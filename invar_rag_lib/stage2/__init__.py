"""Stage 2: the generator adapter, prompts, prefix-cached decoding and the end-to-end rows."""

# The generation rows of docs/method.md §2 and the two that separate the stages' contributions, in
# table order (kept here, free of heavy imports, so the report code can order rows without a model):
# {MiniLM passages, invar passages} × {base model, `generator` adapter}, beside closed-book and BM25.
ROWS = ("closed-book", "bm25-rag", "minilm-rag", "minilm-rag+generator", "invar-retrieval", "invar-rag")

# Each row read by the `generator` adapter -> the row of the base model on the same passages.
ADAPTER_ROWS = {"invar-rag": "invar-retrieval", "minilm-rag+generator": "minilm-rag"}
