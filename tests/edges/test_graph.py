"""The edge graph: counts (GPT-2 small's 32,491), stable order, labels, against an enumeration."""

import pytest
import torch

import attrscope
from attrscope.edges.graph import Graph
from tests.conftest import save_tokenizer


def enumerate_edges(n_layers: int, n_heads: int) -> list[str]:
    """Reference: nodes with the position at which they write / read the residual stream
    (attention of layer l reads at 2l and writes at 2l + 1, the MLP reads at 2l + 1 and writes
    at 2l + 2); an edge wherever the writer comes before the reader."""
    writers = [("input", 0)]
    readers = []
    for layer in range(n_layers):
        for head in range(n_heads):
            writers.append((f"{layer}.{head}", 2 * layer + 1))
            readers += [(f"{layer}.{head}", x, 2 * layer) for x in "qkv"]
        writers.append((f"mlp {layer}", 2 * layer + 2))
        readers.append((f"mlp {layer}", None, 2 * layer + 1))
    readers.append(("logits", None, 2 * n_layers))
    return [f"{w} -> {r}" + (f" ({x})" if x else "")
            for r, x, read_at in readers for w, written_at in writers if written_at <= read_at]


@pytest.fixture(scope="module")
def gpt2_small_shaped_model(tmp_path_factory):
    """GPT-2 small's architecture (12 layers, 12 heads), randomly initialised, narrow d_model:
    the graph depends only on layers and heads."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("gpt2_small_shape")
    tok = save_tokenizer(folder)
    config = GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=48, n_layer=12, n_head=12,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return attrscope.load_model(str(folder))


def test_gpt2_small_architecture_has_32491_edges(gpt2_small_shaped_model):
    graph = Graph.of_model(gpt2_small_shaped_model)
    assert (graph.n_layers, graph.n_heads) == (12, 12)
    assert graph.n_edges == 32_491
    assert len(graph.labels) == len(set(graph.labels)) == 32_491


def test_random_model_count_by_hand(random_model):
    graph = Graph.of_model(random_model)
    # 3 layers, 4 heads: layer l's 12 q/k/v inputs read 1 + 5l sources (12 * (1 + 6 + 11) = 216),
    # MLP l reads 5 + 5l (5 + 10 + 15 = 30), the logits read all 16: 262.
    assert graph.n_edges == 262
    assert graph.n_sources == 16 and graph.n_dests == 3 * 13 + 1


@pytest.mark.parametrize("n_layers,n_heads", [(1, 1), (3, 4), (4, 8), (12, 12)])
def test_labels_and_order_match_enumeration(n_layers, n_heads):
    graph = Graph(n_layers, n_heads)
    assert graph.labels == enumerate_edges(n_layers, n_heads)
    for e in range(0, graph.n_edges, max(1, graph.n_edges // 50)):
        dest, source = int(graph.dest_index[e]), int(graph.source_index[e])
        name, which = graph.dest_names[dest]
        assert graph.labels[e] == f"{graph.source_names[source]} -> {name}" + (f" ({which})" if which else "")


def test_label_forms_and_lookup():
    graph = Graph(12, 12)
    assert graph.labels[graph.edge("5.5", "8.6", "q")] == "5.5 -> 8.6 (q)"
    assert graph.labels[graph.edge("input", "0.3", "k")] == "input -> 0.3 (k)"
    assert graph.labels[graph.edge("mlp 2", "logits")] == "mlp 2 -> logits"
    assert graph.edge("input", "0.0", "q") == 0
    assert graph.edge("mlp 11", "logits") == graph.n_edges - 1
    with pytest.raises(ValueError, match="8.6 -> 5.5"):
        graph.edge("8.6", "5.5", "q")
    with pytest.raises(ValueError, match="n_layers=0"):
        Graph(0, 4)


def test_gather_picks_dest_then_source():
    graph = Graph(2, 3)
    dense = torch.arange(graph.n_dests * graph.n_sources).view(graph.n_dests, graph.n_sources)
    gathered = graph.gather(dense)
    expected = [dense[d, s] for d in range(graph.n_dests) for s in range(int(graph.n_upstream[d]))]
    assert gathered.tolist() == [int(x) for x in expected]


def test_colon_labels_match_the_seed_notebook():
    from attrscope.edges.graph import colon_label

    assert colon_label("5.5 -> 8.6 (q)") == "5:5 -> 8:6 (q)"
    assert colon_label("input -> 0.3 (k)") == "input -> 0:3 (k)"
    assert colon_label("mlp 2 -> logits") == "mlp 2 -> logits"
    assert colon_label("11.10 -> mlp 11") == "11:10 -> mlp 11"
