"""The editor interface: every editor turns renders of the edit set into edited images.

The loop (``edit3dgs.loop``) does not know which editor runs: it renders the
edit set, builds an ``EditRequest`` and calls ``editor.edit(request)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch

from ..cameras import Camera

# progress(stage, done, total): called from the worker; must be cheap.
Progress = Callable[[str, int, int], None]


def no_progress(stage: str, done: int, total: int) -> None:
    pass


@dataclass
class EditRequest:
    """What an editor gets.

    images (B,H,W,3) float in [0,1]: renders of the edit set, one per (camera, timestep);
    cameras[i], timesteps[i]: where image i was rendered from (OpenCV conventions, see cameras.py);
    region_masks: region name -> (B,H,W) soft mask in [0,1], rendered from the head's face regions;
    alphas / depths (B,H,W): the renders' opacity and expected depth (metres);
    gaussian_means: timestep -> (N,3) world positions of the avatar's Gaussians at that timestep,
        so an editor can relate pixels of different timesteps through the FLAME binding
        (the same Gaussian projected in both frames);
    instruction: the user's sentence; seed: for reproducible randomness;
    region_colours: region name -> (B,H,W,3) the region's own contribution to each pixel (its
        Gaussians' colours times their blending weights, the rest of the head black), rendered
        only for editors that set ``uses_region_colours = True``.
    """

    images: torch.Tensor
    cameras: Sequence[Camera]
    timesteps: Sequence[int]
    instruction: str
    seed: int = 0
    region_masks: dict = field(default_factory=dict)
    alphas: torch.Tensor | None = None
    depths: torch.Tensor | None = None
    gaussian_means: dict = field(default_factory=dict)
    should_stop: Callable[[], bool] = lambda: False
    region_colours: dict = field(default_factory=dict)


class Editor(Protocol):
    """name: shown in reports; regions_for(instruction): region masks the editor wants rendered
    (raise Edit3DGSError for instructions it cannot do, before any rendering);
    edit(request, progress) -> edited images (B,H,W,3) in [0,1]."""

    name: str

    def regions_for(self, instruction: str) -> list[str]: ...

    def edit(self, request: EditRequest, progress: Progress = no_progress) -> torch.Tensor: ...
