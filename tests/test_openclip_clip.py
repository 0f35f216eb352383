"""open_clip models with both towers (clpoison.models.pretrained / openclip_text / clip_bpe): the same embeddings as
the model they were written from, the same token ids as open_clip's tokenizer, and the CLI paths.

open_clip itself does not install here (it needs torchvision), so the reference is a tiny Hugging Face CLIP
(``transformers.CLIPModel``, the same architecture as OpenAI's / open_clip's CLIP with ``quick_gelu``) whose state
dict is written in open_clip's layout by the documented key mapping :func:`hf_to_openclip`, and for the tokenizer an
independent re-implementation of open_clip's ``SimpleTokenizer.encode`` (:func:`simple_tokenizer_ids`)."""

from __future__ import annotations

import gzip
import json

import pytest
import torch
import torch.nn.functional as F

from clpoison.errors import ClpoisonError, ConfigError
from clpoison.models.clip_bpe import load_clip_bpe, openclip_vocab
from clpoison.models.pretrained import is_openclip_clip, is_pretrained_clip, load_pretrained_clip

transformers = pytest.importorskip("transformers", reason="transformers is not installed: the optional extra hf (pip install 'clpoison[hf]')")
regex = pytest.importorskip("regex")  # the reference tokenizer's word pattern (a dependency of transformers)

WORDS = ["photo", "airplane", "cat", "of", "a"]
CAPTIONS = ["a photo of a cat.", "A PHOTO  of an airplane!!", "cat 42, photo's", "a blurry photo of a ship " * 6]
CONTEXT = 16  # the text tower's positional embeddings: the longest caption above is truncated


def word_merges(words):
    """Merges that make each word one token (left to right, the last piece with </w>), as in a BPE merges file."""
    out = []
    for w in words:
        for i in range(1, len(w)):
            out.append((w[:i], w[i] + ("</w>" if i == len(w) - 1 else "")))
    return list(dict.fromkeys(out))


def simple_tokenizer_ids(text, merges, context):
    """open_clip's SimpleTokenizer (3.x) on ASCII text: whitespace_clean + lower, its word pattern, byte symbols,
    greedy lowest-rank BPE, <start_of_text> ... <end_of_text>, truncated with <end_of_text> last, 0-padded."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs + [256 + n for n in range(256 - len(bs))]
    bs = bs + [b for b in range(256) if b not in bs]
    byte_enc = {b: chr(c) for b, c in zip(bs, cs)}  # open_clip's bytes_to_unicode()
    symbols = list(byte_enc.values())
    vocab = {t: i for i, t in enumerate([*symbols, *[c + "</w>" for c in symbols], *["".join(m) for m in merges],
                                         "<start_of_text>", "<end_of_text>"])}
    ranks = {m: i for i, m in enumerate(merges)}
    pat = regex.compile(r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                        regex.IGNORECASE)
    ids = []
    for token in pat.findall(" ".join(text.split()).strip().lower()):
        word = tuple(byte_enc[b] for b in token.encode("utf-8"))
        word = word[:-1] + (word[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
            if best not in ranks:
                break
            new, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    new.append(word[i] + word[i + 1])
                    i += 2
                else:
                    new.append(word[i])
                    i += 1
            word = tuple(new)
        ids += [vocab[t] for t in word]
    row = [vocab["<start_of_text>"], *ids, vocab["<end_of_text>"]][:context]
    row[-1] = vocab["<end_of_text>"]
    return row + [0] * (context - len(row))


def hf_to_openclip(hf_state):
    """The key mapping transformers' CLIPModel → open_clip's CLIP (as open_clip's own HF-export script, inverted):
    vision_model.embeddings.{patch_embedding → visual.conv1, class_embedding, position_embedding.weight →
    visual.positional_embedding}, pre_layrnorm → visual.ln_pre, post_layernorm → visual.ln_post,
    visual_projection.weight → visual.proj (transposed); text_model.embeddings.{token_embedding,
    position_embedding.weight → positional_embedding}, final_layer_norm → ln_final, text_projection.weight →
    text_projection (transposed); in every encoder layer q/k/v_proj → attn.in_proj_{weight,bias} (concatenated),
    self_attn.out_proj → attn.out_proj, layer_norm1/2 → ln_1/2, mlp.fc1/fc2 → mlp.c_fc/c_proj; logit_scale."""
    out = {"logit_scale": hf_state["logit_scale"]}
    for tower, pre in (("vision_model", "visual."), ("text_model", "")):
        s = {k[len(tower) + 1:]: v for k, v in hf_state.items() if k.startswith(tower + ".")}
        n = 1 + max(int(k.split(".")[2]) for k in s if k.startswith("encoder.layers."))
        for i in range(n):
            a, b = f"encoder.layers.{i}.", f"{pre}transformer.resblocks.{i}."
            for w in ("weight", "bias"):
                out[b + f"attn.in_proj_{w}"] = torch.cat([s[a + f"self_attn.{p}_proj.{w}"] for p in "qkv"])
                out[b + f"attn.out_proj.{w}"] = s[a + f"self_attn.out_proj.{w}"]
                out[b + f"ln_1.{w}"], out[b + f"ln_2.{w}"] = s[a + f"layer_norm1.{w}"], s[a + f"layer_norm2.{w}"]
                out[b + f"mlp.c_fc.{w}"], out[b + f"mlp.c_proj.{w}"] = s[a + f"mlp.fc1.{w}"], s[a + f"mlp.fc2.{w}"]
        if tower == "vision_model":
            out["visual.conv1.weight"] = s["embeddings.patch_embedding.weight"]
            out["visual.class_embedding"] = s["embeddings.class_embedding"]
            out["visual.positional_embedding"] = s["embeddings.position_embedding.weight"]
            for w in ("weight", "bias"):
                out[f"visual.ln_pre.{w}"], out[f"visual.ln_post.{w}"] = s[f"pre_layrnorm.{w}"], s[f"post_layernorm.{w}"]
        else:
            out["token_embedding.weight"] = s["embeddings.token_embedding.weight"]
            out["positional_embedding"] = s["embeddings.position_embedding.weight"]
            for w in ("weight", "bias"):
                out[f"ln_final.{w}"] = s[f"final_layer_norm.{w}"]
    out["visual.proj"] = hf_state["visual_projection.weight"].T.contiguous()
    out["text_projection"] = hf_state["text_projection.weight"].T.contiguous()
    return out


@pytest.fixture(scope="module")
def oc(tmp_path_factory):
    """A tiny transformers CLIP (32-px ViT, patch 8, width 32, 2 heads, quick_gelu) and the same weights as an
    open_clip folder: open_clip_model.safetensors, bpe_simple_vocab_16e6.txt.gz, open_clip_config.json."""
    from safetensors.torch import save_file

    merges = word_merges(WORDS)
    vocab = openclip_vocab(merges)
    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": CONTEXT, "hidden_act": "quick_gelu",
                     "bos_token_id": vocab["<start_of_text>"], "eos_token_id": vocab["<end_of_text>"],
                     "pad_token_id": 0},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8, "hidden_act": "quick_gelu"},
        projection_dim=16)
    hf = transformers.CLIPModel(cfg).eval()
    d = tmp_path_factory.mktemp("oc") / "model"
    d.mkdir()
    save_file(hf_to_openclip(hf.state_dict()), str(d / "open_clip_model.safetensors"))
    (d / "bpe_simple_vocab_16e6.txt.gz").write_bytes(
        gzip.compress(("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n").encode()))
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
        "embed_dim": 16, "quick_gelu": True, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8,
                                                            "head_width": 16},
        "text_cfg": {"context_length": CONTEXT, "vocab_size": len(vocab), "width": 32, "heads": 2, "layers": 2}}}))
    return {"dir": d, "hf": hf, "merges": merges}


def test_tokenizer_gives_open_clip_ids(oc):
    tok = load_clip_bpe(oc["dir"])
    got = tok.encode(CAPTIONS, CONTEXT)
    want = torch.tensor([simple_tokenizer_ids(c, oc["merges"], CONTEXT) for c in CAPTIONS])
    assert torch.equal(torch.where(got > 0, got - 1, 0), want)  # clpoison's convention: id + 1, 0 pads
    assert tok.last_truncated == 1 and int(want[3, -1]) == tok.eot_id  # truncated, <end_of_text> kept last
    assert (want[0, 1:5] == torch.tensor([openclip_vocab(oc["merges"])[w + "</w>"] for w in ("a", "photo", "of", "a")])).all()


def test_both_towers_equal_the_model_they_were_written_from(oc):
    """Image and caption embeddings and their similarities equal transformers' on the same pixels and token ids
    (float32 round-off: atol 1e-5)."""
    m = load_pretrained_clip(oc["dir"])
    assert m.format == "open_clip" and m.context_length == CONTEXT and m.preprocessing["size"] == 32
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    tokens = m.tokenizer.encode(CAPTIONS, CONTEXT)
    ids = torch.where(tokens > 0, tokens - 1, 0)
    with torch.no_grad():
        ours_i, ours_t = m.model.encode_image(x), m.model.encode_text(tokens)
        ref_i = F.normalize(m_out(oc["hf"].get_image_features(pixel_values=x)), dim=-1)
        ref_t = F.normalize(m_out(oc["hf"].get_text_features(input_ids=ids, attention_mask=(tokens > 0).long())), dim=-1)
    torch.testing.assert_close(ours_i, ref_i, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours_t, ref_t, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours_i @ ours_t.T, ref_i @ ref_t.T, rtol=0, atol=1e-5)
    torch.testing.assert_close(m.model.logit_scale.detach(), oc["hf"].logit_scale.detach())


def m_out(x):
    return getattr(x, "pooler_output", x)  # transformers 5 returns an output object


def test_padding_and_trimming_do_not_change_caption_embeddings(oc):
    m = load_pretrained_clip(oc["dir"])
    tokens = m.tokenizer.encode(CAPTIONS[:3], CONTEXT)
    with torch.no_grad():
        full = m.model.encode_text(tokens)
        trimmed = m.model.encode_text(tokens[:, : int((tokens > 0).sum(1).max())])
    torch.testing.assert_close(full, trimmed, rtol=0, atol=1e-6)


def test_options_matter_and_config_file_is_read(oc, tmp_path):
    """Without open_clip_config.json the defaults (width/64 = 1 head, gelu) give other embeddings; the parameters
    heads / activation restore them (so the test above is not vacuous)."""
    d = tmp_path / "bare"
    d.mkdir()
    for n in ("open_clip_model.safetensors", "bpe_simple_vocab_16e6.txt.gz"):
        (d / n).write_bytes((oc["dir"] / n).read_bytes())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = load_pretrained_clip(oc["dir"]).model.encode_image(x)
        default = load_pretrained_clip(d).model.encode_image(x)
        given = load_pretrained_clip(d, heads=2, activation="quick_gelu").model.encode_image(x)
    assert (default - ref).abs().max() > 1e-3
    torch.testing.assert_close(given, ref, rtol=0, atol=1e-6)


def test_missing_tokenizer_is_named_in_one_line(oc, tmp_path):
    d = tmp_path / "notok"
    d.mkdir()
    (d / "open_clip_model.safetensors").write_bytes((oc["dir"] / "open_clip_model.safetensors").read_bytes())
    assert is_openclip_clip(d) and is_pretrained_clip(d / "open_clip_model.safetensors")
    with pytest.raises(ConfigError, match="bpe_simple_vocab_16e6.txt.gz") as e:
        load_pretrained_clip(d)
    assert "\n" not in str(e.value)
    m = load_pretrained_clip(d, tokenizer=str(oc["dir"] / "bpe_simple_vocab_16e6.txt.gz"))  # named explicitly
    assert m.tokenizer.vocab_size == len(openclip_vocab(oc["merges"]))


def test_image_tower_only_and_foreign_text_towers_are_refused(oc, tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(str(oc["dir"] / "open_clip_model.safetensors"))
    save_file({k: v for k, v in state.items() if k.startswith("visual.")}, str(tmp_path / "visual.safetensors"))
    assert not is_pretrained_clip(tmp_path / "visual.safetensors")
    with pytest.raises(ClpoisonError, match="image tower"):
        load_pretrained_clip(tmp_path / "visual.safetensors")
    torch.save({**state, "logit_bias": torch.zeros(())}, tmp_path / "siglip.pt")
    (tmp_path / "bpe_simple_vocab_16e6.txt.gz").write_bytes((oc["dir"] / "bpe_simple_vocab_16e6.txt.gz").read_bytes())
    with pytest.raises(ClpoisonError, match="SigLIP"):
        load_pretrained_clip(tmp_path / "siglip.pt")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from attack_fixtures import tiny_caption_splits
    from test_attacks_cli import write_csv_dataset

    return write_csv_dataset(tmp_path_factory.mktemp("d") / "src", tiny_caption_splits(n_train=48, n_test=24, size=16))


def test_open_clip_scan_evaluate_and_finetune_from_the_cli(oc, data, tmp_path, capsys):
    from clpoison.cli import main

    train, test = data
    opts = ["data.name=captions-csv", f"data.path={train}", f"data.captions.test_path={test}",
            "data.captions.label_column=label"]
    capsys.readouterr()
    assert main(["scan", str(oc["dir"]), "--data", str(train), "--out", str(tmp_path / "a.csv"), "--score",
                 "similarity", "lid", "--k", "8"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["pairs"] == 48 and s["checkpoint"] == str(oc["dir"])
    assert main(["evaluate", str(oc["dir"]), *opts]) == 0
    assert 0.0 <= json.loads(capsys.readouterr().out)["zeroshot_top1"] <= 1.0
    (tmp_path / "c.yaml").write_text("preset: clip-finetune\n")
    assert main(["run", str(tmp_path / "c.yaml"), f"model.init={oc['dir']}", *opts, "train.epochs=1",
                 "train.batch_size=16", "train.lr=1e-3", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    after = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    before = load_pretrained_clip(oc["dir"]).model.state_dict()
    assert any(not torch.equal(before[k.split(".", 1)[1]], v) for k, v in after.items() if k.startswith("model."))
    from pretrained_fixtures import check_encoder_file

    check_encoder_file(tmp_path / "run", "open_clip", oc["dir"], {"arch": "openclip-vit", "width": 32, "layers": 2,
                                                                 "heads": 2, "patch": 8}, 16, tmp_path)
