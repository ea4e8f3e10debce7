"""CD score: Flax CLIP towers and the eval_CD_score.py arithmetic against the recorded original, a live
transformers CLIPModel, and the converters' key accounting."""
from __future__ import annotations

import json

import chex
import numpy as np
import pytest

from convert import clip as convert_clip
from convert.torch_io import ConversionError
from hv_jax.metrics import cd_score
from hv_jax.models import clip
from tests import parity as P

SINGLE = 1e-5   # single forward values, as the model parity tests (x max(1, |ref|))

pytestmark = pytest.mark.skipif(not (P.PARITY_DIR / 'cd_clip_tiny').is_dir(), reason='no cd_clip_tiny in the set')


@pytest.fixture(scope='module')
def tiny():
  params, config, report = convert_clip.load(str(P.PARITY_DIR / 'cd_clip_tiny'))
  return params, config, report


@pytest.fixture(scope='module')
def recorded(tiny):
  params, config, _ = tiny
  f = P.fixtures()
  img, txt = cd_score.features(params, P.nhwc(f['cd_pixel_values'].reshape((-1,) + f['cd_pixel_values'].shape[2:])),
                               f['cd_text_ids'], config)
  img = np.asarray(img).reshape(f['cd_image_features'].shape)
  return f, img, np.asarray(txt)


def _close(got, ref, rel=SINGLE):
  chex.assert_shape(np.asarray(got), np.asarray(ref).shape)
  chex.assert_trees_all_close(np.asarray(got, np.float64), np.asarray(ref, np.float64),
                              atol=rel * max(1.0, float(np.max(np.abs(ref)))), rtol=0)


def test_config_and_keys(tiny):
  _, config, report = tiny
  cd = P.config_json()['cd_clip']
  assert config.vision.image_resolution == cd['vision']['image_size']
  assert config.vision.embed_dim == cd['projection_dim']
  assert config.text.vocab_size == cd['text']['vocab_size']
  assert [k for k, _ in report.unused] == ['logit_scale']


def test_preprocess_matches_clip_transform(tiny):
  _, config, _ = tiny
  f = P.fixtures()
  v = config.vision
  got = cd_score.preprocess(f['cd_views_uint8'], v.image_resolution, v.mean, v.std)
  _close(got, P.nhwc(f['cd_pixel_values'].reshape((-1,) + f['cd_pixel_values'].shape[2:])).reshape(got.shape))


def test_features_and_terms(recorded):
  f, img, txt = recorded
  _close(img, f['cd_image_features'])
  _close(txt, f['cd_text_features'][0])
  neg_cos, text_sim = cd_score.view_terms(img, txt)
  _close(neg_cos, f['cd_neg_cos'])
  _close(text_sim, f['cd_text_sim'])


def test_score_from_recorded_terms():
  """The aggregation alone, on the script's own per-view values: D, S_var and both final scores."""
  f = P.fixtures()
  d, s = cd_score.instance_terms(f['cd_neg_cos'], f['cd_text_sim'])
  _close(d, f['cd_D'])
  _close(s, f['cd_Svar'])
  assert abs(cd_score.cd_score(f['cd_D'], f['cd_Svar']) - float(f['cd_score'][0])) < 1e-6
  assert abs(cd_score.cd_score(f['cd_D'], f['cd_Svar'], rounded=True)
             - float(f['cd_score_from_rounded_log'][0])) < 1e-6
  per = cd_score.cd_score(d, s, variant='per_instance')
  assert abs(per - float(np.mean(d / s))) < 1e-12


def test_end_to_end_from_views(tiny):
  params, config, _ = tiny
  f = P.fixtures()
  out = cd_score.evaluate_object(params, config, f['cd_views_uint8'], f['cd_text_ids'])
  _close(out['D'], f['cd_D'])
  _close(out['S_var'], f['cd_Svar'])
  assert abs(cd_score.cd_score(out['D'], out['S_var']) - float(f['cd_score'][0])) < 1e-5 * float(f['cd_score'][0])


def test_prompt_rule():
  assert cd_score.prompt_for('school_bus1') == 'An image of school bus'
  assert cd_score.prompt_for('shoe3') == 'An image of shoe'
  assert cd_score.prompt_for('stucking_cups') == 'An image of stucking cups'


def _tiny_tokenizer_dir(tmp_path):
  """A character-level CLIP BPE vocabulary (no merges) for testing the id layout."""
  # GPT-2 / CLIP byte-to-unicode table: printable bytes map to themselves, the rest to 256 + n.
  printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1), *range(ord('®'), ord('ÿ') + 1)]
  extra = [b for b in range(256) if b not in printable]
  chars = [chr(b) for b in printable] + [chr(256 + n) for n in range(len(extra))]
  vocab = {c: i for i, c in enumerate(chars)}
  vocab.update({c + '</w>': len(chars) + i for i, c in enumerate(chars)})
  vocab['<|startoftext|>'] = len(vocab)
  vocab['<|endoftext|>'] = len(vocab)
  (tmp_path / 'vocab.json').write_text(json.dumps(vocab))
  (tmp_path / 'merges.txt').write_text('#version: 0.2\n')
  return tmp_path, vocab


def test_tokenize_layout(tmp_path):
  path, vocab = _tiny_tokenizer_dir(tmp_path)
  tok = cd_score.load_tokenizer(str(path))
  ids = cd_score.tokenize('An image of cream', tok, 32)
  expect = [vocab['<|startoftext|>']]
  for word in ('an', 'image', 'of', 'cream'):
    expect += [vocab[c] for c in word[:-1]] + [vocab[word[-1] + '</w>']]
  expect.append(vocab['<|endoftext|>'])
  assert ids.shape == (1, 32) and ids.dtype == np.int32
  assert ids[0, :len(expect)].tolist() == expect and not ids[0, len(expect):].any()
  assert int(np.argmax(ids[0])) == len(expect) - 1   # end-of-text is the largest id: the pooled position
  with pytest.raises(ValueError, match='longer than the context length'):
    cd_score.tokenize('An image of ' + 'cream ' * 10, tok, 32)
  with pytest.raises(RuntimeError, match='tokenizer files'):
    cd_score.load_tokenizer(str(tmp_path / 'nowhere'))


# ----------------------------------------------------------------------------- live transformers model

@pytest.fixture(scope='module')
def live():
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  hf_cfg = transformers.CLIPConfig(
      text_config=dict(vocab_size=60, hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                       num_attention_heads=2, max_position_embeddings=16, bos_token_id=57, eos_token_id=59,
                       pad_token_id=0, hidden_act='quick_gelu'),
      vision_config=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                         image_size=32, patch_size=16, hidden_act='quick_gelu'),
      projection_dim=24)
  torch.manual_seed(0)
  model = transformers.CLIPModel(hf_cfg).eval()
  with torch.no_grad():
    for p in model.parameters():   # break the default init's symmetries (unit LayerNorms, zero biases)
      p.add_(0.05 * torch.randn_like(p))
  return torch, model, hf_cfg.to_dict()


def _features(out):
  return (out if hasattr(out, 'shape') else out.pooler_output).detach().numpy()


def test_live_transformers_clip(live):
  torch, model, cfg = live
  params, config, report = convert_clip.convert_hf(model.state_dict(), cfg)
  rng = np.random.default_rng(0)
  pixels = rng.normal(size=(3, 3, 32, 32)).astype(np.float32)
  ids = np.zeros((2, 16), np.int64)
  ids[0, :5] = [57, 3, 9, 4, 59]
  ids[1, :8] = [57, 11, 12, 13, 14, 15, 16, 59]
  with torch.no_grad():
    ref_img = _features(model.get_image_features(pixel_values=torch.from_numpy(pixels)))
    ref_txt = _features(model.get_text_features(input_ids=torch.from_numpy(ids)))
  _close(clip.encode_image(params, P.nhwc(pixels), config), ref_img)
  _close(clip.encode_text(params, ids.astype(np.int32), config), ref_txt)


def test_openai_layout_round_trip(live):
  """The OpenAI-layout path (names, config read from shapes as clip.build_model) gives the same params."""
  _, model, cfg = live
  params, config, _ = convert_clip.convert_hf(model.state_dict(), cfg)
  report = convert_clip.Report()
  sd = convert_clip.openai_names_from_hf(model.state_dict(), report)
  sd['token_embedding.weight'] = sd.pop('token_embedding')
  params2, config2, _ = convert_clip.convert_openai(sd)
  assert config2 == config
  chex.assert_trees_all_equal(params2, params)


def test_converter_reports_keys_by_name(live):
  _, model, cfg = live
  sd = dict(model.state_dict())
  sd.pop('text_model.encoder.layers.0.self_attn.k_proj.weight')
  sd.pop('vision_model.post_layernorm.bias')
  sd['vision_model.extra.weight'] = sd['visual_projection.weight']
  sd['text_model.final_layer_norm.weight'] = sd['text_model.final_layer_norm.weight'][:5]
  with pytest.raises(ConversionError) as e:
    convert_clip.convert_hf(sd, cfg)
  msg = str(e.value)
  assert 'missing' in msg and 'text_model.encoder.layers.0.self_attn.k_proj.weight' in msg
  assert 'visual/ln_post/bias' in msg
  assert 'unexpected key (no mapping): vision_model.extra.weight' in msg
  assert 'mis-shaped key: ln_final.weight' in msg
  bad = dict(cfg, text_config=dict(cfg['text_config'], hidden_act='gelu'))
  with pytest.raises(ConversionError, match='hidden_act'):
    convert_clip.config_from_hf(bad)


def test_load_errors(tmp_path):
  with pytest.raises(ConversionError, match='not found'):
    convert_clip.load(str(tmp_path / 'ViT-L-14.pt'))
  (tmp_path / 'hf').mkdir()
  with pytest.raises(ConversionError, match='no config.json'):
    convert_clip.load(str(tmp_path / 'hf'))
  (tmp_path / 'hf' / 'config.json').write_text('{}')
  (tmp_path / 'hf' / 'model.safetensors').write_bytes(b'\x00' * 10)
  with pytest.raises(ConversionError, match='safetensors'):
    convert_clip.load(str(tmp_path / 'hf'))
