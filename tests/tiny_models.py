"""Tiny random models built in code (no downloads), saved in the layouts the real loaders read.

Each builder writes a folder that the user-facing loader opens exactly as it
would open the real checkpoint: Instruct-Pix2Pix (diffusers layout),
Grounding DINO, SAM 2 and CLIP (transformers layout), all safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from edit3dgs.edit.tokenizer import write_clip_tokenizer_files  # the byte-level CLIP BPE files, as the built-in model's


def tiny_clip_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    vocab, merges = write_clip_tokenizer_files(folder)
    tok = CLIPTokenizer(str(vocab), str(merges), model_max_length=16)
    return tok


def tiny_clip_text_config(vocab_size: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                          vocab_size=vocab_size, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                          pad_token_id=1, projection_dim=16)


def build_tiny_ip2p(folder: Path, seed: int = 0, unet_channels=(32, 64), vae_channels=(32, 64), groups: int = 32,
                    heads: int = 8) -> Path:
    """A tiny random Instruct-Pix2Pix in diffusers layout: 8-channel UNet with self-attention at
    both levels, VAE with scale factor 2, 2-layer CLIP text encoder, DDIM scheduler. (Smaller
    ``*_channels`` with matching ``groups``/``heads`` make a faster one.)"""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = Path(folder)
    torch.manual_seed(seed)
    tok = tiny_clip_tokenizer(folder / "_tok_src")
    tok.save_pretrained(folder / "tokenizer")
    CLIPTextModel(tiny_clip_text_config(len(tok))).save_pretrained(folder / "text_encoder", safe_serialization=True)
    UNet2DConditionModel(
        sample_size=16, in_channels=8, out_channels=4, layers_per_block=1, block_out_channels=tuple(unet_channels),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=heads, norm_num_groups=groups,
    ).save_pretrained(folder / "unet", safe_serialization=True)
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=tuple(vae_channels), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=groups, sample_size=32,
    ).save_pretrained(folder / "vae", safe_serialization=True)
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionInstructPix2PixPipeline"}))
    return folder


def write_bert_vocab(folder: Path, words=("eyes", "mouth", "eye", "lips", "face", "hair", "a", "photo", "of")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    toks = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?"] + list(words) + list("abcdefghijklmnopqrstuvwxyz")
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(toks)) + "\n")
    return folder / "vocab.txt"


def build_tiny_grounding_dino(folder: Path, seed: int = 0) -> Path:
    """A tiny random Grounding DINO (Swin + BERT) with its processor, transformers layout."""
    from transformers import (BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection, GroundingDinoImageProcessorPil,
                              GroundingDinoImageProcessor, GroundingDinoProcessor, SwinConfig)

    folder = Path(folder)
    torch.manual_seed(seed)
    swin = SwinConfig(window_size=7, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], image_size=64,
                      out_features=["stage2", "stage3", "stage4"], out_indices=[2, 3, 4])
    text = {"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 8,
            "max_position_embeddings": 16, "model_type": "bert", "vocab_size": 64}
    cfg = GroundingDinoConfig(d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
                              decoder_attention_heads=2, encoder_ffn_dim=8, decoder_ffn_dim=8, num_queries=8,
                              num_feature_levels=4, encoder_n_points=2, decoder_n_points=2, backbone_config=swin,
                              max_text_len=16, text_config=text)
    GroundingDinoForObjectDetection(cfg).eval().save_pretrained(folder, safe_serialization=True)
    tok = BertTokenizer(str(write_bert_vocab(folder / "_vocab")), model_max_length=16)
    ip = GroundingDinoImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 64})
    GroundingDinoProcessor(image_processor=ip, tokenizer=tok).save_pretrained(folder)
    return folder


def build_tiny_sam2(folder: Path, seed: int = 0) -> Path:
    """A tiny random SAM 2 (Hiera + prompt encoder + mask decoder) with its processor."""
    from transformers import (Sam2Config, Sam2HieraDetConfig, Sam2MaskDecoderConfig, Sam2Model,
                              Sam2PromptEncoderConfig, Sam2VisionConfig)

    folder = Path(folder)
    torch.manual_seed(seed)
    bb = Sam2HieraDetConfig(hidden_size=12, image_size=128, patch_stride=4, patch_kernel_size=7, patch_padding=3,
                            blocks_per_stage=[1, 1, 1, 1], embed_dim_per_stage=[12, 24, 48, 96])
    vision = Sam2VisionConfig(backbone_config=bb, backbone_channel_list=[96, 48, 24, 12],
                              backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]], fpn_hidden_size=32)
    cfg = Sam2Config(vision_config=vision,
                     prompt_encoder_config=Sam2PromptEncoderConfig(hidden_size=32, image_size=128, patch_size=16,
                                                                   mask_input_channels=8),
                     mask_decoder_config=Sam2MaskDecoderConfig(hidden_size=32, mlp_dim=64, num_hidden_layers=2,
                                                               num_attention_heads=4, iou_head_hidden_dim=32))
    Sam2Model(cfg).eval().save_pretrained(folder, safe_serialization=True)
    # What Sam2ImageProcessor would save (it needs torchvision, so we write its JSON ourselves).
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Sam2ImageProcessorFast", "size": {"height": 128, "width": 128},
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}))
    return folder


def build_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A tiny random CLIP (text + vision towers) with its processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPVisionConfig

    folder = Path(folder)
    torch.manual_seed(seed)
    tok = tiny_clip_tokenizer(folder / "_tok_src")
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                              image_size=32, patch_size=8, projection_dim=16)
    cfg = CLIPConfig(text_config=tiny_clip_text_config(len(tok)).to_dict(), vision_config=vision.to_dict(), projection_dim=16)
    CLIPModel(cfg).eval().save_pretrained(folder, safe_serialization=True)
    ip = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(folder)
    return folder
