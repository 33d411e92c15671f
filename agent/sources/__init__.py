"""Frame sources: where the engine's inputs come from.

Arrays (IDX files such as Fashion-MNIST, synthetic tensors), a folder of images, video
(files, V4L2 cameras, RTSP/HTTP streams) and a queue the local endpoint fills. Image sources
hand out source pixels, which the bundle's pipeline turns into the model's input; labeled
ones carry the true class so the engine can report live accuracy.
"""

from lepton_edge.agent.sources.arrays import ArraySource, SyntheticSource, idx_source
from lepton_edge.agent.sources.base import Frame, NoFrames, Result, Source
from lepton_edge.agent.sources.images import IMAGE_SUFFIXES, image_dir_source
from lepton_edge.agent.sources.local import QueueSource

__all__ = [
    "IMAGE_SUFFIXES",
    "ArraySource",
    "Frame",
    "NoFrames",
    "QueueSource",
    "Result",
    "Source",
    "SyntheticSource",
    "idx_source",
    "image_dir_source",
]
