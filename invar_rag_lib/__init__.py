"""invar-rag: a reproduction of Invar-RAG (arXiv 2411.07021). The library behind the notebooks."""
__version__ = "0.1.0"
