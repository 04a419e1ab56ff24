"""`from tinyseg.runtime import EdgeSegmenter` keeps working: the torch-free runtime lives in
tinyseg/deploy/runtime.py. Importing it never imports torch."""

from tinyseg.deploy.runtime import EdgeSegmenter

__all__ = ["EdgeSegmenter"]
