"""tinyseg: tiny real-time instance segmentation.

    from tinyseg import Segmenter, EdgeSegmenter   # PyTorch predictor / torch-free edge predictor

Both are imported on first use, so `import tinyseg` (and the edge runtime) never imports torch.
"""

__version__ = "0.1.0"
__all__ = ["EdgeSegmenter", "Segmenter"]


def __getattr__(name: str):
    if name == "Segmenter":
        from tinyseg.deploy.predict import Segmenter

        return Segmenter
    if name == "EdgeSegmenter":
        from tinyseg.deploy.runtime import EdgeSegmenter

        return EdgeSegmenter
    raise AttributeError(f"module 'tinyseg' has no attribute {name!r}")
