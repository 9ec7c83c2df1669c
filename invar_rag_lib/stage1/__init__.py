"""Stage 1 of Invar-RAG: training data groups, environments, LSR targets, the training loop."""
