import pytest
import torch

from bigmodel_course import plotting  # tests/conftest.py selects the Agg backend
from bigmodel_course.utils import (
    cache_dir,
    count_parameters,
    get_device,
    get_profile,
    seed_everything,
)


def test_seed_everything_makes_runs_repeatable():
    seed_everything(3)
    a = torch.randn(4)
    seed_everything(3)
    torch.testing.assert_close(torch.randn(4), a)
    with pytest.raises(ValueError, match="non-negative int"):
        seed_everything(-1)


def test_profile_from_argument_and_environment(monkeypatch):
    monkeypatch.setenv("BIGMODEL_PROFILE", "ci")
    assert get_profile().is_ci and get_profile().pick(1, 2) == 1
    assert get_profile("full").pick(1, 2) == 2
    monkeypatch.delenv("BIGMODEL_PROFILE")
    assert get_profile().name == "full"
    with pytest.raises(ValueError, match="unknown run profile 'fast'"):
        get_profile("fast")


def test_device_choice(monkeypatch):
    monkeypatch.delenv("BIGMODEL_DEVICE", raising=False)
    assert get_device("cpu").type == "cpu"
    assert get_device().type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        get_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            get_device("cuda")


def test_cache_dir_honours_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGMODEL_CACHE", str(tmp_path / "c"))
    path = cache_dir("models", "gpt")
    assert path == tmp_path / "c" / "models" / "gpt" and path.is_dir()


def test_count_parameters_counts_tied_weights_once():
    lin = torch.nn.Linear(3, 3)
    model = torch.nn.Sequential(lin, lin)
    assert count_parameters(model) == 12
    lin.bias.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 9


def test_cjk_font_is_registered_and_heatmap_draws():
    plotting.use_house_style()
    from matplotlib import font_manager

    path = font_manager.findfont(plotting.CJK_FAMILY, fallback_to_default=False)
    assert path.endswith("NotoSansCJK-Regular.ttc")
    ax = plotting.plot_attention(torch.softmax(torch.randn(3, 4), -1), list("我爱模型"), ["a", "b", "c"],
                                 title="注意力", annotate=True)
    assert ax.get_title() == "注意力" and len(ax.get_xticklabels()) == 4
    with pytest.raises(ValueError, match="2-D"):
        plotting.plot_attention(torch.rand(2, 3, 4))
    with pytest.raises(ValueError, match="3 key labels for 4 keys"):
        plotting.plot_attention(torch.rand(2, 4), x_labels=list("abc"))


def test_plot_confusion_matrix_writes_the_counts():
    ax = plotting.plot_confusion_matrix(torch.tensor([[5, 1], [2, 7]]), ["负面", "正面"], title="混淆矩阵")
    assert [t.get_text() for t in ax.texts] == ["5", "1", "2", "7"] and ax.get_title() == "混淆矩阵"
    with pytest.raises(ValueError, match="square"):
        plotting.plot_confusion_matrix(torch.zeros(2, 3), ["a", "b"])
    with pytest.raises(ValueError, match="3 labels for 2 classes"):
        plotting.plot_confusion_matrix(torch.zeros(2, 2), ["a", "b", "c"])


def test_table_renders_html_and_markdown_and_checks_widths():
    t = plotting.Table(["模型", "参数"], [["GPT-2", "124,439,808"], ["<b>", 1]])
    assert repr(t).splitlines()[0] == "| 模型 | 参数 |" and "| <b> | 1 |" in repr(t)
    assert "<td>&lt;b&gt;</td>" in t._repr_html_()
    with pytest.raises(ValueError, match="row 0 has 1 cells, the header 2"):
        plotting.Table(["a", "b"], [["x"]])


def test_heatmap_shared_scale_and_labels():
    ax = plotting.plot_attention(torch.rand(2, 2), vmax=1.0, xlabel="句子", ylabel="句子", colorbar=False)
    assert ax.images[0].get_clim() == (0.0, 1.0) and ax.get_xlabel() == "句子"
