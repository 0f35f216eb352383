"""CLIP unit tests: loss vs a naive reference, rigged zero-shot, tokenizer, generator, retrieval, batches."""

import math
import re

import pytest
import torch
import torch.nn.functional as F

from clpoison.data.captions import CaptionDataset
from clpoison.data.captions.caption_generator import LEXICON, CaptionGenerator, CaptionGeneratorConfig
from clpoison.data.captions.caption_loader import CaptionBatches, CaptionImageAugment
from clpoison.data.captions.tokenizer import CaptionTokenizer
from clpoison.errors import ConfigError
from clpoison.eval.retrieval import retrieval_recall
from clpoison.eval.zeroshot import ZeroShotClassifier, class_text_features
from clpoison.methods.clip import CLIP, CLIPParams, clip_loss
from clpoison.models import build_backbone
from clpoison.models.text import BagOfWordsText, TextTransformer

torch.set_num_threads(2)


def naive_clip_loss(img, txt, scale):
    n = len(img)
    total = 0.0
    for i in range(n):  # image i against every caption
        logits = [scale * float(img[i] @ txt[j]) for j in range(n)]
        total += -logits[i] + math.log(sum(math.exp(l) for l in logits))
    for j in range(n):  # caption j against every image
        logits = [scale * float(txt[j] @ img[i]) for i in range(n)]
        total += -logits[j] + math.log(sum(math.exp(l) for l in logits))
    return total / (2 * n)


def test_clip_loss_matches_naive_reference():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(7, 5, generator=g), dim=1)
    txt = F.normalize(torch.randn(7, 5, generator=g), dim=1)
    for scale in (1.0, 14.2857, 100.0):
        assert float(clip_loss(img, txt, torch.tensor(scale))) == pytest.approx(naive_clip_loss(img, txt, scale), rel=1e-5)


def test_clip_loss_gradients_flow_and_shape_check():
    img = torch.randn(4, 3, requires_grad=True)
    txt = torch.randn(4, 3, requires_grad=True)
    clip_loss(F.normalize(img, dim=1), F.normalize(txt, dim=1), torch.tensor(10.0)).backward()
    assert img.grad.abs().sum() > 0 and txt.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        clip_loss(torch.randn(4, 3), torch.randn(5, 3), torch.tensor(1.0))


def test_logit_scale_init_and_clamp():
    m = CLIP(build_backbone("resnet10", 4, 2), CLIPParams(embed_dim=8, text_width=8, text_layers=1, text_heads=2, context_length=8))
    assert m.model.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        m.model.logit_scale.fill_(10.0)
    assert m.model.scale().item() == pytest.approx(100.0)


def test_text_tower_is_causal_and_pools_at_eot():
    net = TextTransformer(50, 10, 16, 2, 2, 8, eot_id=3).eval()
    a = torch.tensor([[2, 10, 11, 3, 0, 0]])
    b = torch.tensor([[2, 10, 11, 3, 17, 18]])  # different tokens after <eot> must not matter
    assert torch.allclose(net(a), net(b), atol=1e-5)
    assert torch.allclose(net(a), net(a[:, :4]), atol=1e-5)
    assert not torch.allclose(net(a), net(torch.tensor([[2, 10, 12, 3]])), atol=1e-5)


def test_zero_shot_is_perfect_for_rigged_towers():
    classes = ["cat", "dog", "truck"]
    templates = ["a photo of a {c}.", "the {c}"]
    tok = CaptionTokenizer.train([t.format(c=c) for c in classes for t in templates] * 3, vocab_size=300)

    class Rigged(torch.nn.Module):
        """Text embedding = one-hot of the class word found in the caption; image embedding = one-hot of pixel 0."""

        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))
            self.text = type("T", (), {"context_length": 16})()

        def encode_text(self, tokens):
            out = torch.zeros(len(tokens), 3)
            for i, row in enumerate(tokens):
                s = tok.decode(row)
                out[i, [c in s for c in classes].index(True)] = 1
            return out

        def encode_image(self, x):
            return F.one_hot(x[:, 0, 0, 0].round().long().clamp(0, 2), 3).float()

    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    images = labels.view(-1, 1, 1, 1).expand(6, 3, 4, 4).to(torch.uint8)
    clf = ZeroShotClassifier(Rigged(), tok, classes, templates, transform=lambda x: x.float())
    assert clf.top1(images, labels) == 1.0
    assert clf.predict(images).tolist() == labels.tolist()
    feats = class_text_features(Rigged(), tok, classes, templates, 16)
    assert torch.allclose(feats.norm(dim=1), torch.ones(3))


def test_tokenizer_round_trip_truncation_and_save_load(tmp_path):
    caps = ["a photo of a cat", "the dog next to the water", "my truck this morning"] * 5
    tok = CaptionTokenizer.train(caps, vocab_size=300)
    ids = tok.encode(caps[:3], context_length=16)
    assert [tok.decode(r) for r in ids] == caps[:3]
    assert (ids[:, 0] == tok.sot_id).all() and tok.last_truncated == 0
    long = tok.encode(["cat " * 50], context_length=8)
    assert tok.last_truncated == 1 and long[0, -1] == tok.eot_id and (long[0] != 0).all()
    tok.save(tmp_path / "tokenizer.json")
    tok2 = CaptionTokenizer.from_file(tmp_path / "tokenizer.json")
    assert tok2 == tok and torch.equal(tok2.encode(caps, 16), tok.encode(caps, 16))
    with pytest.raises(ConfigError):
        CaptionTokenizer.from_file(tmp_path / "missing.json")


def test_tokenizer_survives_method_state_dict():
    tok = CaptionTokenizer.train(["a cat", "a dog"] * 4, vocab_size=280)
    p = CLIPParams(embed_dim=8, text_width=8, text_layers=1, text_heads=2, context_length=8)
    m = CLIP(build_backbone("resnet10", 4, 2), p, tok)
    m2 = CLIP.from_state_dict(build_backbone("resnet10", 4, 2), p, m.state_dict())
    assert m2.tokenizer == tok
    assert torch.equal(m2.model.text.token_embedding.weight, m.model.text.token_embedding.weight)


def test_bag_of_words_tower_ignores_order_and_padding_and_matches_a_naive_mean():
    torch.manual_seed(0)
    net = BagOfWordsText(vocab_size=50, width=8, output_dim=6)
    tok = torch.tensor([[2, 7, 9, 3, 0, 0], [2, 9, 7, 3, 0, 0], [2, 5, 3, 0, 0, 0]])
    out = net(tok)
    assert torch.allclose(out[0], out[1], atol=1e-6) and not torch.allclose(out[0], out[2])
    assert torch.allclose(net(tok[:, :4]), out, atol=1e-6)  # trailing padding changes nothing
    naive = torch.stack([net.mlp(net.token_embedding.weight[[t for t in row.tolist() if t]].mean(0)) for row in tok])
    assert torch.allclose(out, naive, atol=1e-6)


def test_text_tower_choice_trains_and_round_trips():
    tok = CaptionTokenizer.train(["a cat", "a dog"] * 4, vocab_size=280)
    p = CLIPParams(embed_dim=8, text_tower="bow", text_width=8, context_length=8)
    m = CLIP(build_backbone("resnet10", 4, 2), p, tok)
    assert isinstance(m.model.text, BagOfWordsText)
    batch = {"images": torch.rand(4, 3, 16, 16), "tokens": tok.encode(["a cat", "a dog", "a cat", "a dog"], 8)}
    loss, _ = m.training_step(batch)
    loss.backward()
    assert m.model.text.token_embedding.weight.grad is not None
    m2 = CLIP.from_state_dict(build_backbone("resnet10", 4, 2), p, m.state_dict())
    assert torch.equal(m2.model.text.mlp[0].weight, m.model.text.mlp[0].weight)
    with pytest.raises(ConfigError, match="text_tower"):
        CLIPParams(text_tower="lstm")


def test_caption_generator_is_deterministic_and_varied():
    names = list(LEXICON)
    labels = [i % 10 for i in range(400)]
    a = CaptionGenerator(seed=1).captions_for(names, labels)
    assert a == CaptionGenerator(seed=1).captions_for(names, labels)
    assert a != CaptionGenerator(seed=2).captions_for(names, labels)
    flat = [c[0] for c in a]
    assert len(set(flat)) > 300
    assert any("vehicle" in c for c in flat) and any(" car" in f" {c}" for c in flat)
    none = CaptionGenerator(seed=0, noise_fraction=1.0).captions_for(names, labels)
    assert not any(re.search(rf"\b{n}\b", c[0]) for c in none for n in names)
    multi = CaptionGenerator(seed=0, captions_per_image=3).captions_for(names, labels[:5])
    assert all(len(c) == 3 for c in multi)
    with pytest.raises(ConfigError):
        CaptionGeneratorConfig(noise_fraction=1.5)


def test_retrieval_recall_with_several_captions():
    img = torch.eye(3)
    txt = torch.tensor([[1.0, 0, 0], [0, 0, 1], [0, 1, 0], [0.9, 0.1, 0]])
    owner = torch.tensor([0, 1, 2, 0])  # caption 1 describes image 1 but looks like image 2
    r = retrieval_recall(img, txt, owner, ks=(1, 2))
    assert r["recall_at_1_i2t"] == pytest.approx(1 / 3)
    assert r["recall_at_1_t2i"] == pytest.approx(2 / 4)
    assert r["recall_at_2_t2i"] == 1.0


def test_caption_batches_sample_each_caption_and_resume_exactly():
    ds = CaptionDataset(torch.randint(0, 255, (8, 3, 32, 32), dtype=torch.uint8), [["a", "b"]] * 8)
    tokens = torch.tensor([[2, 5, 3, 0], [2, 6, 7, 3]] * 8)
    cb = CaptionBatches(ds, tokens, 4, torch.device("cpu"), seed=3, augment=CaptionImageAugment(32))
    assert len(cb) == 2
    seen = set()
    for e in range(20):
        for b in cb.epoch(e):
            assert b["tokens"].shape[1] in (3, 4) and b["images"].dtype == torch.float32
            seen.update(b["caption_index"].tolist())
    assert seen == set(range(16))
    assert torch.equal(cb.caption_choice(2), cb.caption_choice(2))
    with pytest.raises(ConfigError):
        CaptionBatches(ds, tokens, 16, torch.device("cpu"))
