"""Documents packed into one row stay apart: segment ids mask attention in every attention path,
positions restart per document, and no target crosses a boundary, so each packed document's loss
and gradients are those it has alone."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from bigjax import kernels, parallel, steps, tasks
from bigjax.config import default_config
from bigjax.models import attention
from bigjax.models import transformer as T


def qkv(batch=2, length=256, heads=4, groups=2, width=32, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    return (jax.random.normal(keys[0], (batch, length, heads, width)),
            jax.random.normal(keys[1], (batch, length, groups, width)),
            jax.random.normal(keys[2], (batch, length, groups, width)))


def packed_segments(length: int, cuts_per_row, pad: int = 0) -> np.ndarray:
    """Segment ids 1, 2, ... changing at each cut, the last `pad` positions 0 (padding)."""
    rows = []
    for cuts in cuts_per_row:
        row = np.ones(length, np.int32)
        for cut in cuts:
            row[cut:] += 1
        if pad:
            row[length - pad:] = 0
        rows.append(row)
    return np.stack(rows)


def splash_on_mesh(q, k, v, *, causal, query_segments_BT, key_segments_BS, **unused):
    """Pallas' TPU splash kernel in its interpreter, sharded data x fsdp x tensor (8 devices)."""
    config = default_config()
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
    mesh = parallel.make_mesh(config.mesh)
    on_mesh = jax.device_put((q, k, v, query_segments_BT),
                             NamedSharding(mesh, PartitionSpec(('data', 'fsdp'))))
    with parallel.layout(mesh, parallel.sharding_rules(config)):
        return jax.jit(lambda q, k, v, s: attention.splash_attention(
            q, k, v, causal=causal, segments_BT=s, interpret=True))(*on_mesh)


PATHS = {
    'einops': attention.einops_attention,
    'dot_product': attention.library_attention,
    'fused_cpu_kernel': attention.fused_attention,
    'splash_interpret': splash_on_mesh,
}


@pytest.mark.parametrize('path', sorted(PATHS))
def test_a_poison_key_in_one_segment_leaves_the_other_segments_bit_identical(path):
    """levanter's test_segment_ids_are_respected: huge keys and values written into one document
    change nothing, bit for bit, in the documents beside it (the fused kernel: blocks skipped,
    blocks within one document, and blocks across a boundary masked element by element)."""
    if path == 'fused_cpu_kernel' and kernels._compiler() is None:
        pytest.skip('no C++ compiler')
    q, k, v = qkv(batch=4)
    segments = jnp.asarray(packed_segments(256, [[100, 170], [64, 128], [], [30, 31, 200]],
                                           pad=0))
    poisoned_segment = 2
    poison = (segments == poisoned_segment)[:, :, None, None]
    k_bad, v_bad = jnp.where(poison, 1e4, k), jnp.where(poison, -1e4, v)
    attend = functools.partial(PATHS[path], causal=True, query_segments_BT=segments,
                               key_segments_BS=segments)
    clean, dirty = np.asarray(attend(q, k, v)), np.asarray(attend(q, k_bad, v_bad))
    others = np.asarray(segments != poisoned_segment)
    assert others.sum() > 500 and (~others).sum() > 100
    np.testing.assert_array_equal(clean[others], dirty[others])
    assert not np.allclose(clean[~others], dirty[~others])  # the poison was seen where it may be
    reference = attention.einops_attention(q, k, v, causal=True, query_segments_BT=segments,
                                           key_segments_BS=segments)
    np.testing.assert_allclose(clean, reference, atol=2e-5)


def test_positions_restart_in_every_segment():
    segments = jnp.asarray([[1, 1, 1, 2, 2, 0, 0], [3, 3, 3, 3, 3, 3, 3]])
    np.testing.assert_array_equal(T.segment_positions(segments),
                                  [[0, 1, 2, 0, 1, 0, 1], [0, 1, 2, 3, 4, 5, 6]])


def test_end_of_document_ids_start_the_next_segment():
    """A stream [d1 eos d2 eos d3] cut into windows: the eos starts the document after it."""
    tokens = jnp.asarray([[5, 1, 7, 8, 1, 9], [1, 4, 4, 4, 1, 1]])
    np.testing.assert_array_equal(tasks.document_segments(tokens, eos_id=1),
                                  [[1, 2, 2, 2, 3, 3], [1, 1, 1, 1, 2, 3]])


def lm_and_params(positions: str, attention_name: str = 'einops'):
    cfg = T.TransformerConfig(width=64, depth=2, num_heads=4, num_kv_heads=2, mlp_dim=96,
                              max_len=128, positions=positions, attention=attention_name)
    model = T.TransformerLM(cfg, 40)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32),
                                 train=False))['params']
    return model, params


def loss_and_grads(model, params, batch):
    """The LM task's mean loss over the batch's learnt targets, and its gradients."""
    task = tasks.lm()

    def mean(params):
        outputs = model.apply({'params': params}, task.inputs(batch, None, False), train=False,
                              **task.call_kwargs(batch))
        sums = task.sums(outputs, batch)
        return sums['loss_sum'] / sums['count']
    return jax.jit(jax.value_and_grad(mean))(params)


@pytest.mark.parametrize('attention_name', ['einops', 'fused'])
@pytest.mark.parametrize('positions', ['rope', 'learned'])
def test_packed_documents_have_the_losses_and_gradients_they_have_alone(positions,
                                                                        attention_name):
    """MaxText's packed-vs-unpacked check: two documents packed in one row with padding after
    them; each document's loss and gradients (its weights alone set) equal the document run
    alone, in float32 to 1e-6, with rotary and with learned positions (those restart per
    document), on the einops path and on the fused CPU kernel."""
    if attention_name == 'fused' and kernels._compiler() is None:
        pytest.skip('no C++ compiler')
    model, params = lm_and_params(positions, attention_name)
    rng = np.random.default_rng(0)
    first, second = rng.integers(2, 40, 37), rng.integers(2, 40, 53)
    length = 129  # a window of 128 inputs + 1 target
    tokens = np.zeros((1, length), np.int32)
    tokens[0, :37], tokens[0, 37:90] = first, second
    segments = np.zeros((1, length), np.int32)
    segments[0, :37], segments[0, 37:90] = 1, 2
    for document, segment in ((first, 1), (second, 2)):
        weights = (segments == segment).astype(np.float32)
        packed = {'tokens': tokens, 'segments': segments, 'weights': weights}
        packed_loss, packed_grads = loss_and_grads(model, params, packed)
        alone_loss, alone_grads = loss_and_grads(model, params, {'tokens': document[None]})
        np.testing.assert_allclose(packed_loss, alone_loss, rtol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6),
                     packed_grads, alone_grads)


def test_windows_of_a_stream_with_document_masks_score_each_document_on_its_own():
    """Pretraining with data.text.document_mask: a window of [doc1 eos doc2 eos doc3] scores
    every target (the eos after a document is learnt from that document), and each document's
    part equals that document run alone, as if it started the window (positions from 0)."""
    model, params = lm_and_params('learned')
    rng = np.random.default_rng(1)
    docs = [rng.integers(2, 40, n) for n in (20, 30, 12)]
    eos = 1
    stream = np.concatenate([docs[0], [eos], docs[1], [eos], docs[2]])[None].astype(np.int32)
    task = tasks.lm(document_eos=eos)
    inputs = task.inputs({'tokens': stream}, None, False)
    logits = model.apply({'params': params}, inputs, train=False,
                         **task.call_kwargs({'tokens': stream}))
    log_probs = jax.nn.log_softmax(logits[0])
    per_target = -jnp.take_along_axis(log_probs, stream[0, 1:, None], -1)[:, 0]
    start = 0
    for i, doc in enumerate(docs):
        alone = np.concatenate([[eos] if i else [], doc, [eos] if i < 2 else []]).astype(np.int32)
        alone_logits = model.apply({'params': params}, alone[None, :-1], train=False)
        alone_targets = -jnp.take_along_axis(jax.nn.log_softmax(alone_logits[0]),
                                             alone[1:, None], -1)[:, 0]
        np.testing.assert_allclose(per_target[start:start + len(alone_targets)], alone_targets,
                                   rtol=1e-5, atol=1e-6)
        start += len(alone_targets)
    assert start == stream.shape[1] - 1  # every target belongs to one document


def test_microbatches_and_meshes_keep_the_weighted_loss_exact():
    """loss_sum / count of answer-only weights: one batch, 4 microbatches, and an 8-device
    data x fsdp mesh give the same update and the same sums."""
    model, params = lm_and_params('rope')
    rng = np.random.default_rng(2)
    batch = {'tokens': rng.integers(2, 40, (8, 33)).astype(np.int32),
             'segments': np.repeat(np.arange(1, 5), 9)[None, :33].repeat(8, 0).astype(np.int32),
             'weights': (rng.random((8, 33)) < 0.3).astype(np.uint8)}
    import optax
    tx = optax.sgd(0.1)
    state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state={},
                             opt_state=tx.init(params), rng=jax.random.PRNGKey(0))
    task = tasks.lm()
    results = []
    for microbatches, mesh_shape in ((1, None), (4, None), (1, (4, 2))):
        mesh = None
        kwargs = {}
        if mesh_shape:
            config = default_config()
            config.mesh.data, config.mesh.fsdp = mesh_shape
            mesh = parallel.make_mesh(config.mesh)
            kwargs = dict(mesh=mesh, rules=parallel.sharding_rules(config))
        step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, task=task,
                                         microbatches=microbatches, **kwargs))
        new_state, sums = step(state, batch if mesh is None else parallel.global_batch(batch,
                                                                                        mesh))
        results.append((jax.device_get(new_state.params), jax.device_get(sums)))
    (params_1, sums_1), *others = results
    assert sums_1['count'] == float((batch['weights'][:, 1:] * (
        batch['segments'][:, 1:] == batch['segments'][:, :-1])).sum())
    for params_n, sums_n in others:
        np.testing.assert_allclose(sums_n['loss_sum'], sums_1['loss_sum'], rtol=1e-6)
        assert sums_n['count'] == sums_1['count']
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                     params_n, params_1)
