"""Each victim's official file as plain facts (no torch): its name, where to get it, how it is packed, how big.

Why a module without torch: `python -m advwm.weights list` and `advwm.run`'s check for missing weight files answer
before torch loads (about 3 s of CPU on the development machine, 40 s on a busy one). The victim registry
(`advwm.victims.registry`) takes its file facts from here, so the two cannot disagree; the network facts
(`NETWORKS`: class, full-size arch, parameter count, fp32 size) are recorded from the networks built on the meta
device, and `tests/test_weights_tool.py` rebuilds them and compares, so they cannot drift either.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OfficialFile:
    """Where a victim's official checkpoint comes from and how it is packed.

    `url`: a direct download (`python -m advwm.weights fetch <name>`), None = `source` says how to get it;
    `url_member`: the checkpoint inside a zip/tar archive (by path, or by file name when unique); `sha256`: of the
    downloaded bytes (the archive, if any), when known.
    """

    checkpoint_file: str
    source: str
    container: str
    url: str | None = None
    url_member: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class NetworkFacts:
    """The full-size official network, as `python -m advwm.weights list` shows it (recorded; tests recompute it)."""

    network: str
    arch_text: str
    n_parameters: int
    fp32_bytes: int


FILES: dict[str, OfficialFile] = {
    "stargan": OfficialFile(
        checkpoint_file="200000-G.ckpt",
        source=(
            "Get the official StarGAN CelebA 256x256 5-attribute generator '200000-G.ckpt' "
            "(a bare state_dict): "
            "yunjey/stargan `bash download.sh pretrained-celeba-256x256` -> stargan_celeba_256/models/"
            "200000-G.ckpt, or the CMUA-Watermark weights release (VDIGPKU/CMUA-Watermark README, "
            "weights/stargan/)."
        ),
        container="bare state_dict",
        # yunjey/stargan download.sh (pretrained-celeba-256x256); dl=1 is Dropbox's direct-download switch
        url="https://www.dropbox.com/s/zdq6roqf63m0v5f/celeba-256x256-5attrs.zip?dl=1",
        url_member="200000-G.ckpt",
    ),
    "attgan": OfficialFile(
        checkpoint_file="weights.199.pth",
        source=(
            "Get the official AttGAN generator 'weights.199.pth' ({'G': state_dict}) of experiment "
            "256_shortcut1_inject0_none: the CMUA-Watermark weights release (VDIGPKU/CMUA-Watermark README, "
            "weights/AttGAN/ -> AttGAN/output/256_shortcut1_inject0_none/checkpoint/) or the pretrained "
            "models linked from elvisyjlin/AttGAN-PyTorch's README."
        ),
        container="{'G': state_dict}",
    ),
    "aggan": OfficialFile(
        checkpoint_file="200000-G.ckpt",
        source=(
            "Get the AttentionGAN-v1-multi CelebA 256x256 5-attribute generator '200000-G.ckpt' "
            "(a bare state_dict): the CMUA-Watermark weights release (VDIGPKU/CMUA-Watermark README, "
            "weights/AttentionGAN/ -> AttentionGAN/AttentionGAN_v1_multi/checkpoints/celeba_256_pretrained/), "
            "or Ha0Tang/AttentionGAN `AttentionGAN-v1-multi/download_pretrained.sh celeba_256`."
        ),
        container="bare state_dict",
        # Ha0Tang/AttentionGAN AttentionGAN-v1-multi/download_pretrained.sh celeba_256 (a .tar.gz)
        url="http://disi.unitn.it/~hao.tang/uploads/models/AttentionGAN/celeba_256_pretrained.tar.gz",
        url_member="200000-G.ckpt",
    ),
    "stgan": OfficialFile(
        checkpoint_file="G_200000.pth.tar",
        source=(
            "STGAN (bluestyle97/STGAN-pytorch) publishes no pretrained weights (its issue #5): train it with "
            "that repo's `main.py --config configs/train_stgan.yaml` (13 attributes, g_layers 5, shortcut_layers "
            "3, use_stu, one_more_conv) and use 'G_<iter>.pth.tar' from the experiment's checkpoints folder "
            "({'state_dict': ..., 'optimizer': ...}, 'module.'-prefixed after multi-GPU training)."
        ),
        container="{'state_dict': ..., 'optimizer': ...}, keys 'module.'-prefixed",
    ),
    "ugatit": OfficialFile(
        checkpoint_file="selfie2anime_params_1000000.pt",
        source=(
            "U-GAT-IT (znxlwm/UGATIT-pytorch) publishes no PyTorch weights (the paper's selfie2anime weights "
            "are TensorFlow, taki0112/UGATIT): train it with that repo's `main.py --dataset <name>` "
            "(add --light True for the light variant) and use '<name>_params_<step:07d>.pt' or "
            "'<name>_params_latest.pt' (a dict holding 'genA2B', 'genB2A' and the discriminators)."
        ),
        container="U-GAT-IT params {'genA2B', 'genB2A', discriminators}; genA2B is used by default",
    ),
    "hisd": OfficialFile(
        checkpoint_file="gen_00600000.pt",
        source=(
            "Get the official HiSD CelebA-HQ 256x256 checkpoint (configs/celeba-hq_256.yaml; a dict "
            "{'gen', 'gen_test'}, 'gen_test' is used): 'gen_00600000.pt' of the CMUA-Watermark weights release "
            "(VDIGPKU/CMUA-Watermark README, weights/HiSD/ -> HiSD/), or the author's 256 px release "
            "'checkpoint_256_celeba-hq.pt' (imlixinyang/HiSD, same layout; its 128 px "
            "'checkpoint_128_celeba-hq.pt' needs arch.yaml=celeba-hq.yaml)."
        ),
        container="{'gen', 'gen_test'}; 'gen_test' is used",
    ),
}

# Recorded from `advwm.weights.layout.layout(name)` (the meta-device network with the registry's default arch).
NETWORKS: dict[str, NetworkFacts] = {
    "stargan": NetworkFacts("Generator", "conv_dim=64, c_dim=5, repeat_num=6", 8_430_528, 33_751_808),
    "attgan": NetworkFacts(
        "Generator",
        "enc_dim=64, enc_layers=5, enc_norm_fn=batchnorm, enc_acti_fn=lrelu, dec_dim=64, dec_layers=5, "
        "dec_norm_fn=batchnorm, dec_acti_fn=relu, n_attrs=13, shortcut_layers=1, inject_layers=0, img_size=256",
        43_352_707, 173_442_060),
    "aggan": NetworkFacts("Generator", "conv_dim=64, c_dim=5, repeat_num=6", 8_433_664, 33_764_352),
    "stgan": NetworkFacts(
        "Generator", "attr_dim=13, conv_dim=64, n_layers=5, shortcut_layers=3, use_stu=True, one_more_conv=True",
        74_471_760, 297_939_904),
    "ugatit": NetworkFacts(
        "ResnetGenerator", "input_nc=3, output_nc=3, ngf=64, n_blocks=4, img_size=256, light=False",
        278_959_808, 1_115_839_232),
    "hisd": NetworkFacts("Generator", "yaml=celeba-hq_256.yaml", 19_043_939, 76_175_756),
}

VICTIMS: tuple[str, ...] = tuple(FILES)


def official_file(name: str) -> OfficialFile:
    """The facts of `name`'s official file; an unknown name lists the known victims."""
    try:
        return FILES[name]
    except KeyError:
        raise ValueError(f"unknown victim {name!r}; known victims: {list(VICTIMS)}") from None


def spec_fields(name: str) -> dict[str, str | None]:
    """The `VictimSpec` fields that come from here (the registry spreads them into each spec)."""
    entry = official_file(name)
    return {"checkpoint_file": entry.checkpoint_file, "source": entry.source, "url": entry.url,
            "url_member": entry.url_member, "sha256": entry.sha256}
