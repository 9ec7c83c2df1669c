"""What the notebooks show, not what the study runs: the trunk-cache check, the pooling floor and
the alignment demo (notebook 02), the LSR / invariance summary (notebook 03). The losses
themselves live in `losses.py`; the training loop in `stage1/train.py`."""
