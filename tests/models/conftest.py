"""Real models (transformers from configs with random weights, torch.nn CNN and RNN
models): never download anything. tests/conftest.py (the parent) has already set
TRITON_INTERPRET for the CPU run before triton was imported."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"          # huggingface_hub: no network, ever
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
