"""The editor interface: every editor turns renders of the edit set into edited images.

The loop (``edit3dgs.loop``) does not know which editor runs: it renders the
edit set, builds an ``EditRequest`` and calls ``editor.edit(request)``; what an
editor needs beyond that it says through the hooks of ``Editor``, never by the
loop inspecting it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

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
        only for editors whose ``uses_region_colours`` is True.
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


class Editor:
    """What every editor is to the loop, and the hooks the loop calls on it (as gsplat's densification
    strategies: the loop calls each hook at its point; an editor overrides those it needs, and the
    defaults here ask for nothing).

    name: shown in reports and recorded in edit.json;
    regions_for(instruction): region masks the editor wants rendered (raise Edit3DGSError for
        instructions it cannot do, before any rendering);
    edit(request, progress) -> edited images (B,H,W,3) in [0,1].

    Hooks:
    set_background(rgb): the avatar's background colour, once, before the edit set is rendered;
    appearance_only: the refit fits colours only, unless the user chose (``EditSettings.appearance_only``);
    uses_region_colours: the loop renders ``EditRequest.region_colours`` for this editor;
    record(): what edit.json keeps of the editor's run, beside the settings that were chosen.
    """

    name: str = "editor"
    appearance_only: bool = False
    uses_region_colours: bool = False

    def set_background(self, background: Sequence[float]) -> None:
        pass

    def regions_for(self, instruction: str) -> list[str]:
        raise NotImplementedError

    def edit(self, request: EditRequest, progress: Progress = no_progress) -> torch.Tensor:
        raise NotImplementedError

    def record(self) -> dict:
        return {}
