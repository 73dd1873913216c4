"""A small random GPT-2 written in OpenAI's TensorFlow checkpoint layout, and a numpy reference forward pass
that reads OpenAI's arrays directly (independent of gptdist's model code)."""

import json
from pathlib import Path

import numpy as np

HPARAMS = {"n_vocab": 50257, "n_ctx": 64, "n_embd": 32, "n_head": 4, "n_layer": 2}


def random_params(seed=0, hparams=HPARAMS) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d, n_layer = hparams["n_embd"], hparams["n_layer"]

    def w(*shape, scale=0.1):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    params = {"model/wte": w(hparams["n_vocab"], d), "model/wpe": w(hparams["n_ctx"], d),
              "model/ln_f/g": 1 + w(d), "model/ln_f/b": w(d)}
    for i in range(n_layer):
        h = f"model/h{i}/"
        params.update({
            h + "ln_1/g": 1 + w(d), h + "ln_1/b": w(d), h + "ln_2/g": 1 + w(d), h + "ln_2/b": w(d),
            h + "attn/c_attn/w": w(1, d, 3 * d), h + "attn/c_attn/b": w(3 * d),
            h + "attn/c_proj/w": w(1, d, d), h + "attn/c_proj/b": w(d),
            h + "mlp/c_fc/w": w(1, d, 4 * d), h + "mlp/c_fc/b": w(4 * d),
            h + "mlp/c_proj/w": w(1, 4 * d, d), h + "mlp/c_proj/b": w(d),
        })
    return params


def write_tf_checkpoint(folder: Path, params: dict[str, np.ndarray], hparams=HPARAMS) -> Path:
    import tensorflow as tf

    folder.mkdir(parents=True, exist_ok=True)
    with tf.Graph().as_default():
        for name, value in params.items():
            tf.compat.v1.get_variable(name, initializer=tf.constant(value))
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            saver.save(session, str(folder / "model.ckpt"), write_meta_graph=True)
    (folder / "hparams.json").write_text(json.dumps(hparams))
    return folder


def _layer_norm(x, g, b, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * g + b


def _gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def reference_logits(params: dict[str, np.ndarray], tokens: np.ndarray, hparams=HPARAMS) -> np.ndarray:
    """GPT-2's forward pass in float64 numpy, as OpenAI's model.py computes it."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    d, heads = hparams["n_embd"], hparams["n_head"]
    t = len(tokens)
    x = p["model/wte"][tokens] + p["model/wpe"][:t]
    mask = np.tril(np.ones((t, t), dtype=bool))
    for i in range(hparams["n_layer"]):
        h = f"model/h{i}/"
        a = _layer_norm(x, p[h + "ln_1/g"], p[h + "ln_1/b"])
        qkv = a @ p[h + "attn/c_attn/w"][0] + p[h + "attn/c_attn/b"]
        q, k, v = (m.reshape(t, heads, d // heads).transpose(1, 0, 2) for m in np.split(qkv, 3, axis=-1))
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(d // heads)
        scores = np.where(mask, scores, -1e10)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        merged = (weights @ v).transpose(1, 0, 2).reshape(t, d)
        x = x + merged @ p[h + "attn/c_proj/w"][0] + p[h + "attn/c_proj/b"]
        m = _layer_norm(x, p[h + "ln_2/g"], p[h + "ln_2/b"])
        hidden = _gelu(m @ p[h + "mlp/c_fc/w"][0] + p[h + "mlp/c_fc/b"])
        x = x + hidden @ p[h + "mlp/c_proj/w"][0] + p[h + "mlp/c_proj/b"]
    x = _layer_norm(x, p["model/ln_f/g"], p["model/ln_f/b"])
    return x @ p["model/wte"].T
