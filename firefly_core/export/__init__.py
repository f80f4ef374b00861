"""Exports of a model folder to formats other engines load: GGUF (llama.cpp, ollama) and a Modelfile.

`gguf.py` owns the export (`export_gguf`, `model_info`), `gguf_model.py` the architectures and
tensors, `gguf_vocab.py` the tokenizer metadata, `ollama.py` the Modelfile. Importing this package
is cheap; torch, `gguf` and llama-cpp-python are imported when an export runs.
"""
