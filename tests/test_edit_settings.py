"""One source of edit settings: ``EditSettings.from_dict`` / ``resolved(device)`` behind the CLI, the server
and the Blender panel, so the same choices give the same edit (equal ``edit.json`` settings)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from edit3dgs.cli import build_parser
from edit3dgs.cli.edit import settings_from_args
from edit3dgs.errors import Edit3DGSError
from edit3dgs.loop import EditSettings

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from edit3dgs_addon import jobargs  # noqa: E402  (bpy-free)


def cli(*flags, device="cpu"):
    a = build_parser().parse_args(["edit", "--avatar", "ava", "--prompt", "make the hair blue", *flags])
    return settings_from_args(a, device=device)


def test_unknown_or_bad_setting_is_one_line_naming_it():
    with pytest.raises(Edit3DGSError) as e:
        EditSettings.from_dict({"prompt": "make the hair blue", "iteration_multiplier": 2})
    msg = str(e.value)
    assert "'iteration_multiplier'" in msg and "\n" not in msg and "--" not in msg
    with pytest.raises(Edit3DGSError, match="edit setting 'views_per_iter'"):
        EditSettings.from_dict({"prompt": "make the hair blue", "views_per_iter": 0})
    with pytest.raises(Edit3DGSError, match="edit setting 'prompt'"):
        EditSettings.from_dict({"prompt": "  "})
    # the ranges are EditSettings' own, so a server job gets the command line's limits
    for name, value in (("rounds", 10**9), ("seed", -1), ("lr", float("nan")), ("lrs", {"xyz": -1.0}), ("lrs", "fastest"),
                        ("iters_per_batch", "auto")):
        with pytest.raises(Edit3DGSError, match=f"edit setting '{name}'"):
            EditSettings.from_dict({"prompt": "make the hair blue", name: value})
    # on the command line the same mistake names the flag
    with pytest.raises(Edit3DGSError, match="--views-per-iter"):
        cli("--views-per-iter", "0")


def test_device_defaults_live_in_resolved():
    auto = EditSettings.from_dict({"prompt": "make the hair blue"})
    assert auto.scale == "auto" and auto.views_per_iter == "auto"
    cpu, gpu = auto.resolved("cpu"), auto.resolved("cuda:0")
    assert (cpu.scale, cpu.views_per_iter, cpu.device) == (0.25, 4, "cpu")
    assert (gpu.scale, gpu.views_per_iter, gpu.device) == (1.0, None, "cuda:0")
    chosen = EditSettings.from_dict({"prompt": "x", "scale": 0.5}).resolved("cpu")
    assert (chosen.scale, chosen.views_per_iter) == (0.5, 4)  # each "auto" on its own, as the CLI always did
    assert cli().scale == 0.25 and cli("--views-per-iter", "2").views_per_iter == 2
    assert cli(device="cuda").views_per_iter is None and cli(device="cuda").scale == 1.0


def test_panel_defaults_resolve_to_the_cli_defaults():
    """An untouched panel sends only the prompt; resolved, every field equals `edit3dgs edit`'s defaults."""
    panel = jobargs.edit_settings({"prompt": "make the hair blue"}, {"device": "auto", "editor_model": ""})
    for device in ("cpu", "cuda"):
        assert asdict(EditSettings.from_dict(panel).resolved(device)) == asdict(cli(device=device))
    # and choices made on both sides agree field for field
    ui = {"prompt": "make the hair blue", "editor": "region", "rounds": 2, "iters_per_batch": 5, "views_per_iter": 2,
          "scale": 0.5, "seed": 3, "timesteps": "0-8:4", "local_regions": "hair", "cameras": [0, 4]}
    panel = jobargs.edit_settings(ui, {"device": "cpu"})
    flags = ("--editor", "region", "--rounds", "2", "--iters-per-batch", "5", "--views-per-iter", "2", "--scale", "0.5",
             "--seed", "3", "--timesteps", "0-8:4", "--regions", "hair", "--cameras", "0,4", "--device", "cpu")
    assert asdict(EditSettings.from_dict(panel).resolved("cpu")) == asdict(cli(*flags))


def test_server_edit_job_rejects_unknown_settings(builtin_avatar_dir, tmp_path):
    from test_server import Serve

    s = Serve()
    try:
        assert s.recv()[0] == "ready"
        s.send("job", {"id": "e", "kind": "edit", "args": {"avatar": str(builtin_avatar_dir), "out_dir": str(tmp_path / "o"),
                                                            "settings": {"prompt": "make the hair blue", "iteration_multiplier": 2}}})
        k, p = s.until({"done", "error"}, "e")
        assert k == "error" and p["kind"] == "input" and "'iteration_multiplier'" in p["message"]
    finally:
        s.send("shutdown", {})
        s.p.wait(10)


def test_cli_dry_run_prints_what_edit_json_records(builtin_avatar_dir):
    res = subprocess.run([sys.executable, "-m", "edit3dgs.cli", "edit", "--avatar", str(builtin_avatar_dir), "--prompt",
                          "make the hair blue", "--device", "cpu", "--dry-run"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == asdict(cli())


def test_panel_and_cli_ip2p_defaults_resolve_equal():
    """Instruct-Pix2Pix: neither side writes the editor's defaults; IP2PSettings is the table of them."""
    panel = jobargs.edit_settings({"prompt": "make him look older", "editor": "ip2p"}, {"device": "auto"})
    flags = ("--editor", "ip2p")
    a = build_parser().parse_args(["edit", "--avatar", "ava", "--prompt", "make him look older", *flags])
    for device in ("cpu", "cuda"):
        assert asdict(EditSettings.from_dict(panel).resolved(device)) == asdict(settings_from_args(a, device=device))
    assert settings_from_args(a, device="cpu").editor_options == {}
    # the same choices on both sides give the same options
    ui = {"prompt": "x", "editor": "ip2p", "steps": 12, "guidance_text": 6.5, "preserve_mouth": False,
          "mask_strength": 0.8, "temporal_keys": True}
    a = build_parser().parse_args(["edit", "--avatar", "ava", "--prompt", "x", "--editor", "ip2p", "--steps", "12",
                                   "--guidance-text", "6.5", "--inpaint-regions", "eye_region,eyes",
                                   "--inpaint-strength", "0.8", "--temporal-keys"])
    panel = jobargs.edit_settings(ui, {})
    assert panel["editor_options"] == settings_from_args(a, device="cpu").editor_options
    assert asdict(EditSettings.from_dict(panel).resolved("cpu")) == asdict(settings_from_args(a, device="cpu"))


# the Instruct-Pix2Pix flags the command line offered before they were generated from IP2PSettings, by field
IP2P_FIELD_FLAGS = {"steps": "--steps", "guidance_text": "--guidance-text", "guidance_image": "--guidance-image",
                    "resolution": "--resolution", "multiview": "--no-multiview", "chunk_size": "--chunk-size",
                    "key_neighbours": "--key-neighbours", "batch_size": "--batch-size", "temporal_keys": "--temporal-keys",
                    "inpaint": "--no-inpaint", "inpaint_strength": "--inpaint-strength", "inpaint_start": "--inpaint-start"}


def test_ip2p_defaults_are_written_once():
    """IP2PSettings is the one table of ip2p defaults: the editor keeps no copy of them, the CLI's flags are generated
    from its fields (type, default in the help) and each one sets its field, nothing else."""
    import argparse
    import inspect

    from edit3dgs.cli.edit import add_ip2p_args, ip2p_options_from_args
    from edit3dgs.edit import make_editor
    from edit3dgs.edit.ip2p import InstructPix2PixEditor, IP2PSettings

    D, types = asdict(IP2PSettings()), IP2PSettings.field_types()
    assert not set(D) & set(inspect.signature(InstructPix2PixEditor.__init__).parameters), "a second copy of a default"
    assert asdict(make_editor("ip2p").settings) == D
    p = argparse.ArgumentParser()
    add_ip2p_args(p)
    flags = {a.dest: a for a in p._actions if a.dest in D}
    assert {k: a.option_strings for k, a in flags.items()} == {k: [f] for k, f in IP2P_FIELD_FLAGS.items()}
    assert ip2p_options_from_args(p.parse_args([])) == {}
    for name, a in flags.items():
        assert a.default is None and (a.type is None if types[name] is bool else a.type is types[name]), name
        if D[name] is not None and types[name] is not bool:
            assert f"(default: {D[name]})" in a.help, name
        value = not D[name] if types[name] is bool else types[name](1)
        opts = ip2p_options_from_args(p.parse_args([a.option_strings[0]] + ([] if types[name] is bool else ["1"])))
        assert opts == {name: value}, name
        assert asdict(make_editor("ip2p", **opts).settings) == {**D, name: value}, name


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_same_choices_through_the_cli_parser_and_the_panel_resolve_equal(device):
    """Every choice both front ends offer, made on both: the resolved EditSettings are equal field for field."""
    ui = {"prompt": "make him look older", "editor": "ip2p", "rounds": 3, "iters_per_batch": 7, "views_per_iter": 5,
          "scale": 0.3, "seed": 11, "local_regions": "hair, skin", "cameras": [1, 2, 9], "num_timesteps": 5,
          "steps": 9, "guidance_text": 5.5, "guidance_image": 1.25, "temporal_keys": True, "preserve_eyes": False,
          "mask_strength": 0.6, "mask_source": "FLAME", "ip2p_model": "builtin"}
    prefs = {"device": device, "editor_model": "/models/ip2p", "detector_model": "/models/gd", "sam_model": "/models/sam",
             "compile_unet": True}
    flags = ("--editor", "ip2p", "--rounds", "3", "--iters-per-batch", "7", "--views-per-iter", "5", "--scale", "0.3",
             "--seed", "11", "--regions", "hair,skin", "--cameras", "1,2,9", "--num-timesteps", "5", "--device", device,
             "--steps", "9", "--guidance-text", "5.5", "--guidance-image", "1.25", "--temporal-keys",
             "--inpaint-regions", "lips", "--inpaint-strength", "0.6", "--mask-source", "flame", "--model", "builtin",
             "--detector-model", "/models/gd", "--sam-model", "/models/sam", "--compile-unet")
    a = build_parser().parse_args(["edit", "--avatar", "ava", "--prompt", "make him look older", *flags])
    panel = EditSettings.from_dict(jobargs.edit_settings(ui, prefs)).resolved(device)
    cli_side = settings_from_args(a, device=device)
    assert asdict(panel) == asdict(cli_side)
    assert (panel.rounds, panel.scale, panel.views_per_iter, panel.editor_options["steps"]) == (3, 0.3, 5, 9)
    assert panel.editor_options["compile_unet"] is True


def test_index_lists_as_text_are_read_by_the_one_parser():
    """Blender sends the artist's timesteps text as typed; EditSettings reads it with the CLI's parser (one
    parser, one set of errors), so '5-2' is an error naming the setting, never an empty edit."""
    from edit3dgs.errors import Edit3DGSError
    from edit3dgs.loop import EditSettings

    s = EditSettings.from_dict({"prompt": "make the hair blue", "timesteps": "0-8:4", "cameras": "0, 12"})
    assert s.timesteps == [0, 4] and s.cameras == [0, 12]
    for bad in ("5-2", "a", "0,,4", "-1"):
        with pytest.raises(Edit3DGSError) as e:
            EditSettings.from_dict({"prompt": "make the hair blue", "timesteps": bad})
        assert "edit setting 'timesteps'" in str(e.value) and "--" not in str(e.value)
