"""The device side of the data path, in PyTorch: letterbox/normalise uint8 frames and decode boxes on the
tensor's device (a GPU, or the CPU for checking), so only the final boxes leave it.

Written against tensors, not a backend: any engine that takes and returns device tensors
(``infer_device``) shares it. Importing this package needs PyTorch.
"""

from edge_agent.device.decode import DEVICE_DECODERS, Candidates, candidates_for, detections_on_device
from edge_agent.device.letterbox import preprocess_on_device
from edge_agent.device.nms import batched_greedy_nms

__all__ = ["DEVICE_DECODERS", "Candidates", "batched_greedy_nms", "candidates_for", "detections_on_device",
           "preprocess_on_device"]
