"""Export round trips for real: ONNX -> onnxruntime, ONNX/IR -> OpenVINO (CPU), INT8, the torch-free runtime,
video prediction, and the error messages of the edge path."""

import importlib.util
import json
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest

from tinyseg.deploy.export.onnx import export_onnx, float_node_names, onnx_meta
from tinyseg.deploy.export.openvino import export_openvino
from tinyseg.deploy.export.parity import MOVED_MAX_REDUCED, check_parity, tolerances, verify_batch
from tinyseg.deploy.export.quantize import quantize_onnx
from tinyseg.errors import EdgeRuntimeError
from tinyseg.predict import Segmenter
from tinyseg.runtime import EdgeSegmenter
from tinyseg.tools.cli import main


@pytest.fixture(scope="module")
def seg(spread_ckpt):
    return Segmenter.load(spread_ckpt)


@pytest.fixture(scope="module")
def onnx_path(seg, tmp_path_factory):
    return export_onnx(seg, tmp_path_factory.mktemp("onnx") / "m.onnx", max_det=20)


@pytest.fixture(scope="module")
def images(seg):
    return verify_batch(seg.imgsz, 4)


def test_onnx_matches_pytorch(seg, onnx_path, images):
    import onnx

    onnx.checker.check_model(onnx.load(str(onnx_path)))
    edge = EdgeSegmenter(onnx_path)
    assert edge.class_names == seg.class_names and edge.imgsz == 128 and edge.meta["max_det"] == 20
    ops = {n.op_type for n in onnx.load(str(onnx_path)).graph.node}
    assert {"MaxPool", "TopK", "MatMul"} <= ops and "NonMaxSuppression" not in ops  # decode is in the graph
    out = edge.run(images)  # dynamic batch: 4 images at once
    ref = seg.run(images, 20)
    assert out["boxes"].shape == (4, 20, 4) and out["masks"].shape == (4, 20, 64, 64)
    np.testing.assert_allclose(out["scores"], ref["scores"], atol=1e-4)  # sorted scores agree
    parity = check_parity(seg, onnx_path, images, conf=0.0)
    assert parity.ok and parity.detections >= 40, parity


@pytest.mark.parametrize("half", [False, True])
def test_openvino_matches_pytorch(seg, onnx_path, images, tmp_path, half):
    pytest.importorskip("openvino")
    xml = export_openvino(onnx_path, tmp_path / "m.xml", half=half)
    assert xml.with_suffix(".bin").is_file()
    edge = EdgeSegmenter(xml)
    assert edge.backend == "openvino" and edge.meta["precision"] == ("fp16" if half else "fp32")
    parity = check_parity(seg, xml, images, conf=0.0, **tolerances(half))
    assert parity.ok and parity.detections >= 40, parity
    # The prototypes reach the mask MatMul channels-last without a copy: no 4-D Transpose is executed
    # (without the identity conv after the prototype sum, or with a dynamic batch, one is).
    runtime = edge._openvino_request(1)[0].get_runtime_model()
    transposes = [
        op.get_friendly_name()
        for op in runtime.get_ops()
        if op.get_rt_info()["layerType"].astype(str) == "Transpose" and op.input(0).get_partial_shape().rank == 4
    ]
    assert not transposes, transposes


def test_parity_catches_a_model_that_differs(spread_ckpt, onnx_path, images, tmp_path):
    """The reduced-precision allowance (a few peaks moving a cell) still fails an export whose boxes differ."""
    from tinyseg.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(spread_ckpt)
    for key in [k for k in ck["model"] if k.startswith("box.") and k.endswith("bias")]:
        ck["model"][key] = ck["model"][key] + 1.0  # boxes change; the export keeps the old ones
    save_checkpoint(ck, tmp_path / "other.pt")
    other = Segmenter.load(tmp_path / "other.pt")
    parity = check_parity(other, onnx_path, images, conf=0.0, **tolerances(True))
    assert parity.detections >= 40 and parity.moved > MOVED_MAX_REDUCED * parity.detections and not parity.ok


def test_int8_onnx_runs_and_is_sane(seg, onnx_path, images, tmp_path):
    q = quantize_onnx(onnx_path, tmp_path / "q.onnx", images)
    edge = EdgeSegmenter(q)
    assert edge.meta["precision"] == "int8"
    out = edge.run(images[:1])
    assert np.isfinite(out["boxes"]).all() and (out["boxes"] >= 0).all() and (out["boxes"] <= 128).all()
    assert ((out["scores"] >= 0) & (out["scores"] <= 1)).all()
    assert ((out["masks"] >= 0) & (out["masks"] <= 1)).all()
    import onnx

    graph = onnx.load(str(q)).graph
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)
    # The stem conv stays float (int8 over 3 input channels is slower): its weight is a float initializer,
    # its input the float normalisation; every later conv reads a DequantizeLinear output.
    floats = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs[0].input[1] in floats and convs[0].input[0] not in dequantized
    # Float too: the heatmap's output conv and the last convs of the prototypes (see quantize.tail_nodes).
    assert sum(c.input[1] in floats for c in convs) == 4
    # The decode tail stays float: the max-pool peak test sees real scores.
    ref = seg.run(images[:1], 20)
    assert np.abs(out["scores"][0, :3] - ref["scores"][0, :3]).max() < 0.1


def test_compact_keeps_the_computation(onnx_path, images, tmp_path):
    """compact() drops all-zero zero points of constant DequantizeLinear inputs, node names and value_info,
    and shortens tensor names; the graph computes exactly the same outputs."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from tinyseg.deploy.export.quantize import compact

    model = onnx.load(str(onnx_path))
    # Route the first Conv's weight through an int8 DequantizeLinear with zero points of 0, as QDQ files do.
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    w = next(t for t in model.graph.initializer if t.name == conv.input[1])
    arr = numpy_helper.to_array(w)
    scale = np.abs(arr).reshape(len(arr), -1).max(1) / 127 + 1e-12
    q = np.round(arr / scale[:, None, None, None]).astype(np.int8)
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(q, "w_q"),
            numpy_helper.from_array(scale.astype(np.float32), "w_scale"),
            numpy_helper.from_array(np.zeros(len(arr), np.int8), "w_zero"),
        ]
    )
    model.graph.node.insert(0, helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w_dq"], axis=0))
    conv.input[1] = "w_dq"
    before = tmp_path / "before.onnx"
    onnx.save(model, str(before))
    small = compact(onnx.load(str(before)))
    onnx.checker.check_model(small)
    after = tmp_path / "after.onnx"
    onnx.save(small, str(after))
    assert after.stat().st_size < before.stat().st_size - 30_000  # ~50 KB of names and shapes
    dq = next(n for n in small.graph.node if n.op_type == "DequantizeLinear")
    assert len(dq.input) == 2 and not any(n.name for n in small.graph.node) and not len(small.graph.value_info)
    assert [o.name for o in small.graph.output] == [o.name for o in model.graph.output]
    feed = {"images": images[:2]}
    a = ort.InferenceSession(str(before)).run(None, feed)
    b = ort.InferenceSession(str(after)).run(None, feed)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)


def test_int8_openvino_runs(seg, onnx_path, images, tmp_path):
    pytest.importorskip("nncf")
    from tinyseg.deploy.export.quantize import quantize_openvino

    # Calibration images whose brightest pixels differ: one reaches 255, three stay at or below 140.
    calib = np.minimum(images, np.array([255, 140, 140, 140], np.uint8)[:, None, None, None])
    calib[:, :, 0, 0] = 0
    calib[0, :, 0, 1] = 255
    xml = quantize_openvino(onnx_path, tmp_path / "q.xml", calib)
    out = EdgeSegmenter(xml).run(images[:2])
    assert out["masks"].shape == (2, 20, 64, 64) and np.isfinite(out["scores"]).all()
    import openvino as ov

    # OpenVINO keeps the stem int8 and the prototypes' last convs float (their input is not a FakeQuantize).
    ops = {op.get_friendly_name(): op for op in ov.Core().read_model(str(xml)).get_ops()}

    def quantized(conv: str) -> bool:
        return (
            ops[conv + "/Conv/WithoutBiases"].input(0).get_source_output().get_node().get_type_name() == "FakeQuantize"
        )

    assert quantized("/model/backbone/stem/stem.0") and quantized("/model/mask/fine/fine.1/fine.1.0")
    assert not quantized("/model/mask/fine/fine.2") and not quantized("/model/mask/coarse/coarse.1")
    # Activation ranges span all calibration images: the stem's input, (x - 127.5) / 63.75, from -2 to 2 (NNCF's
    # default, the mean over images of each one's min and max, would put the top near (2 + 3 * 0.2) / 4 = 0.65).
    fq = ops["/model/backbone/stem/stem.0/Conv/WithoutBiases"].input(0).get_source_output().get_node()
    low, high = (fq.input(i).get_source_output().get_node().get_data().item() for i in (1, 2))
    assert low == pytest.approx(-2.0, abs=0.05) and high == pytest.approx(2.0, abs=0.05)


BLOCK_TORCH = textwrap.dedent("""
    import sys, importlib.abc
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
    sys.meta_path.insert(0, Block())
""")


def test_runtime_never_imports_torch(onnx_path, synth, tmp_path):
    code = BLOCK_TORCH + textwrap.dedent(f"""
        from tinyseg.runtime import EdgeSegmenter
        from tinyseg.io import read_image
        seg = EdgeSegmenter({str(onnx_path)!r})
        det = seg.predict(read_image({str(synth / "images/val/000000.png")!r}), conf=0.0)
        assert det.masks.shape == (20, 128, 128), det.masks.shape
        from tinyseg.tools.cli import main
        rc = main(["predict", "--weights", {str(onnx_path)!r}, "--source", {str(synth / "images/val")!r},
                   "--out", {str(tmp_path / "p")!r}, "--conf", "0.1", "--json", {str(tmp_path / "r.json")!r},
                   "--format", "polygons", "--save-txt"])
        assert rc == 0
        assert "torch" not in sys.modules
        print("OK")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-2000:]
    assert len(list((tmp_path / "p").glob("*.png"))) == 8
    assert len(list((tmp_path / "p" / "labels").glob("*.txt"))) == 8  # YOLO-seg labels, torch-free
    assert json.loads((tmp_path / "r.json").read_text())


def test_predict_on_generated_video(onnx_path, synth, tmp_path, capsys):
    video = tmp_path / "in.mp4"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (128, 128))
    for i in range(6):
        w.write(cv2.imread(str(synth / f"images/val/{i:06d}.png")))
    w.release()
    out = tmp_path / "out.mp4"
    assert main(["predict", "--weights", str(onnx_path), "--source", str(video), "--save-video", str(out)]) == 0
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    assert "6 frames" in capsys.readouterr().out


def test_edge_errors_are_clear(onnx_path, tmp_path, capsys):
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    with pytest.raises(EdgeRuntimeError, match="bad.onnx: not a loadable ONNX model"):
        EdgeSegmenter(tmp_path / "bad.onnx")
    with pytest.raises(EdgeRuntimeError, match="expected .onnx, OpenVINO .xml or .tflite"):
        (tmp_path / "m.pb").write_bytes(b"x")
        EdgeSegmenter(tmp_path / "m.pb")
    if importlib.util.find_spec("ai_edge_litert"):
        with pytest.raises(EdgeRuntimeError, match="m.tflite: not a loadable TFLite model"):
            (tmp_path / "m.tflite").write_bytes(b"x")
            EdgeSegmenter(tmp_path / "m.tflite")
    edge = EdgeSegmenter(onnx_path)
    with pytest.raises(EdgeRuntimeError, match=r"expects uint8 \[B, 3, 128, 128\]"):
        edge.run(np.zeros((1, 3, 320, 320), np.uint8))
    with pytest.raises(EdgeRuntimeError, match="expects uint8"):
        edge.run(np.zeros((1, 128, 128, 3), np.uint8))  # NHWC instead of NCHW
    assert main(["predict", "--weights", str(onnx_path), "--source", "99", "--max-frames", "1"]) == 2
    assert "camera 99 could not be opened" in capsys.readouterr().err
    assert main(["predict", "--weights", str(onnx_path), "--source", str(tmp_path / "no.mp4")]) == 2
    assert main(["predict", "--weights", str(onnx_path), "--source", str(tmp_path), "--show"]) == 2


def test_missing_backend_names_the_extra(onnx_path):
    code = textwrap.dedent(f"""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] == "onnxruntime":
                    raise ImportError("blocked")
        sys.meta_path.insert(0, Block())
        from tinyseg.tools.cli import main
        sys.exit(main(["predict", "--weights", {str(onnx_path)!r}, "--source", {str(onnx_path)!r}]))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 2 and "pip install 'tinyseg[edge]'" in res.stderr, res.stderr


def test_export_command_verifies_itself(spread_ckpt, synth, tmp_path, capsys):
    assert main(["export", "--weights", str(spread_ckpt), "--format", "onnx", "--out", str(tmp_path / "x.onnx")]) == 0
    out = capsys.readouterr().out
    assert "parity vs PyTorch: OK" in out and (tmp_path / "x.onnx").is_file()
    assert " 0 detections" not in out  # it compared real detections
    assert (
        main(
            [
                "eval",
                "--weights",
                str(tmp_path / "x.onnx"),
                "--val",
                str(synth / "val.json"),
                "--json",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "m.json").read_text())["num_images"] == 8
    assert main(["export", "--weights", str(spread_ckpt), "--format", "onnx", "--int8"]) == 2
    assert "--int8 needs calibration images" in capsys.readouterr().err


def test_bench_prints_the_zoo_row(spread_ckpt, synth, tmp_path, capsys):
    md = tmp_path / "bench.md"
    assert (
        main(
            [
                "bench",
                "--weights",
                str(spread_ckpt),
                "--val",
                str(synth / "val.json"),
                "--imgsz",
                "128",
                "--backends",
                "onnxruntime",
                "--threads",
                "1",
                "--runs",
                "3",
                "--calib",
                str(synth / "train.json"),
                "--calib-num",
                "8",
                "--max-det",
                "20",
                "--out",
                str(tmp_path / "b"),
                "--markdown",
                str(md),
                "--json",
                str(tmp_path / "b.json"),
            ]
        )
        == 0
    )
    res = json.loads((tmp_path / "b.json").read_text())
    zoo = res["zoo"]
    assert {"mask_ap_fp32", "box_ap_fp32", "mask_ap_int8", "box_ap_int8", "fp32_mb", "int8_mb", "gflops"} <= set(zoo)
    assert zoo["int8_mb"] < zoo["fp32_mb"]
    assert res["calib"] == f"{synth / 'train.json'} (8 images)"  # calibrated on training images, not on --val
    assert [(r["precision"], r["threads"]) for r in res["latency"]] == [("fp32", 1), ("int8", 1)]
    assert all(r["median_ms"] > 0 and 0 < r["graph_median_ms"] and 0 < r["peak_mb"] < 2000 for r in res["latency"])
    assert "| backend | precision | threads |" in md.read_text() and "INT8 speed-up of the graph" in md.read_text()


def test_node_names_the_export_relies_on_exist(seg, onnx_path):
    """The node names INT8 keeps in float and OpenVINO rewires are derived from the model's modules; each must
    name nodes of the exported graph (a rename in the model would otherwise silently quantize them)."""
    import onnx

    names = [n.name for n in onnx.load(str(onnx_path)).graph.node]
    nodes = float_node_names(seg.model)
    assert onnx_meta(onnx_path)["nodes"] == nodes
    for prefix in nodes["network"] + nodes["keep_float"] + nodes["stem"]:
        assert any(n.startswith(prefix) for n in names), prefix
    assert nodes["prototype_sum"] in names
    assert nodes["keep_float"][0] == "/model/heatmap/out/" and "/model/mask/Add" in nodes["keep_float"]


def test_predict_json_uses_the_datasets_category_ids(spread_ckpt, onnx_path, synth, tmp_path):
    """COCO results carry the dataset's own category ids, from the checkpoint and from an exported model."""
    from tinyseg.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(spread_ckpt)
    ck["cat_ids"] = [10, 20, 30, 40, 50, 60]
    save_checkpoint(ck, tmp_path / "ids.pt")
    assert (
        main(["export", "--weights", str(tmp_path / "ids.pt"), "--format", "onnx", "--out", str(tmp_path / "i.onnx")])
        == 0
    )
    for weights in (tmp_path / "ids.pt", tmp_path / "i.onnx"):
        out = tmp_path / f"r_{weights.suffix[1:]}.json"
        args = ["predict", "--weights", str(weights), "--source", str(synth / "images/val"), "--conf", "0.0"]
        assert main(args + ["--out", str(tmp_path / "p"), "--json", str(out)]) == 0
        ids = {r["category_id"] for r in json.loads(out.read_text())}
        assert ids and ids <= {10, 20, 30, 40, 50, 60}, ids
