"""`from tinyseg.predict import Segmenter` keeps working: the PyTorch predictor lives in tinyseg/deploy/predict.py."""

from tinyseg.deploy.predict import Segmenter

__all__ = ["Segmenter"]
