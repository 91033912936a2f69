import os

# Nothing may download at test time: a hub lookup must fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

# Two shared cores: one intra-op thread per test process keeps the suite fast and stable.
torch.set_num_threads(int(os.environ.get("TRKIT_TEST_THREADS", "1")))
