# The same DAG as dvc.yaml, for `snakemake --cores N` (tests/test_dag.py keeps them equal).
# A rule's `params:` names its params.yaml block, so Snakemake reruns it when that block changes.
# `report` reads the MLflow DB, which Snakemake cannot track: refresh it with --forcerun report.
configfile: "params.yaml"


rule all:
    input:
        "data/raw/summary.json",
        "results/pretrain/history.png",
        "results/pretrain/metrics.json",
        "results/pretrain/history.csv",
        "results/classifier/history.png",
        "results/classifier/metrics.json",
        "results/classifier/history.csv",
        "results/eval/scores.csv",
        "results/eval/figures",
        "results/eval/plots/roc.csv",
        "results/eval/plots/pr.csv",
        "results/eval/plots/confusion.csv",
        "results/eval/plots/reliability.csv",
        "results/eval/plots/reliability_before_temperature.csv",
        "results/eval/plots/risk_coverage.csv",
        "results/eval/plots/coverage_per_generator.csv",
        "results/eval/uncertainty.json",
        "results/eval/conformal.json",
        "results/generator/samples",
        "results/generator/summary.json",
        "results/generator/history.csv",
        "results/report",
        "results/federated/model.pt",
        "results/federated/partitions.csv",
        "results/federated/clients.csv",
        "results/federated/comparison.csv",
        "results/federated/metrics.json",
        "results/federated/history.csv",


rule download:
    input:
        "stages/download.py",
        "core/errors.py",
        "core/images.py",
        "core/io.py",
        "core/paramfile.py",
        "core/params.py",
        "core/schema.py",
        "core/tracking.py",
        "sources/folder.py",
        "sources/hf.py",
        "sources/hub.py",
        "sources/rawset.py",
        "sources/synthetic.py",
        "sources/zips.py",
    output:
        directory("data/raw/images"),
        "data/raw/manifest.csv",
        "data/raw/summary.json",
    params:
        data=config["data"],
    log:
        "logs/download.log",
    conda:
        "envs/pipeline.yaml"
    shell:
        "python -m stages.download > {log} 2>&1"


rule faces:
    input:
        "stages/faces.py",
        "core/device.py",
        "core/errors.py",
        "core/images.py",
        "core/io.py",
        "core/paramfile.py",
        "core/params.py",
        "core/pixels.py",
        "core/schema.py",
        "core/tracking.py",
        "faces/cache.py",
        "faces/crop.py",
        "faces/detect.py",
        "faces/grayscale.py",
        "faces/metrics.py",
        "faces/mtcnn.py",
        "faces/pipeline.py",
        "faces/run.py",
        "data/raw/images",
        "data/raw/manifest.csv",
    output:
        directory("data/faces/images"),
        directory("data/faces/views"),
        "data/faces/manifest.csv",
        "data/faces/views.csv",
        "data/faces/params.json",
        "data/faces/metrics.json",
    params:
        faces=config["faces"],
    log:
        "logs/faces.log",
    conda:
        "envs/pipeline.yaml"
    shell:
        "python -m stages.faces > {log} 2>&1"


rule split:
    input:
        "stages/split.py",
        "core/errors.py",
        "core/io.py",
        "core/paramfile.py",
        "core/params.py",
        "core/schema.py",
        "core/tracking.py",
        "sources/split.py",
        "data/faces/manifest.csv",
    output:
        "data/splits/train.csv",
        "data/splits/val.csv",
        "data/splits/calib.csv",
        "data/splits/test.csv",
        "data/splits/summary.json",
    params:
        split=config["split"],
    log:
        "logs/split.log",
    conda:
        "envs/pipeline.yaml"
    shell:
        "python -m stages.split > {log} 2>&1"


rule pretrain:
    input:
        "stages/pretrain.py",
        "core/device.py",
        "core/errors.py",
        "core/images.py",
        "core/io.py",
        "core/paramfile.py",
        "core/params.py",
        "core/pixels.py",
        "core/plots.py",
        "core/pretrained.py",
        "core/schema.py",
        "core/tracking.py",
        "faces/crop.py",
        "faces/detect.py",
        "faces/mtcnn.py",
        "models/classifier.py",
        "selfsup/augment.py",
        "selfsup/data.py",
        "selfsup/encoder.py",
        "selfsup/probe.py",
        "selfsup/train.py",
        "data/splits/train.csv",
        "data/splits/val.csv",
        "data/faces/images",
        "data/faces/params.json",
        "data/raw/manifest.csv",
    output:
        "results/pretrain/encoder.pt",
        "results/pretrain/history.png",
        "results/pretrain/metrics.json",
        "results/pretrain/history.csv",
    params:
        pretrain=config["pretrain"],
    log:
        "logs/pretrain.log",
    conda:
        "envs/pipeline.yaml"
    shell:
        "python -m stages.pretrain > {log} 2>&1"


rule train_classifier:
    input:
        "stages/train_classifier.py",
        "classifier/augment.py",
        "classifier/checkpoint.py",
        "classifier/data.py",
        "classifier/infer.py",
        "classifier/metrics.py",
        "classifier/train.py",
        "core/device.py",
        "core/distributed.py",
        "core/errors.py",
        "core/images.py",
        "core/io.py",
        "core/paramfile.py",
        "core/params.py",
        "core/pixels.py",
        "core/plots.py",
        "core/pretrained.py",
        "core/schema.py",
        "core/tracking.py",
        "models/classifier.py",
        "models/ensemble.py",
        "selfsup/encoder.py",
        "data/splits/train.csv",
        "data/splits/val.csv",
        "data/faces/images",
        "data/faces/views",
        "data/faces/views.csv",
        "data/faces/params.json",
        "data/raw/summary.json",
        "results/pretrain/encoder.pt",
    output:
        "results/classifier/model.pt",
        "results/classifier/history.png",
        "results/classifier/metrics.json",
        "results/classifier/history.csv",
    params:
        classifier=config["classifier"],
    log:
        "logs/train_classifier.log",
    conda:
        "envs/pipeline.yaml"
    shell:
        "python -m stages.train_classifier > {log} 2>&1"


rule train_federated:
    input:
        "stages/train_federated.py",
        "classifier/augment.py",
        "classifier/checkpoint.py",
        "classifier/data.py",
        "classifier/infer.py",
        "classifier/metrics.py",
        "classifier/train.py",
        "core/device.py",
        "core/distributed.py",
        "core/errors.py",
        "core/images.py",
        "core/io.py",
        "core/paramfile.py",
        "core/params.py",
        "core/pixels.py",
        "core/plots.py",
        "core/pretrained.py",
        "core/schema.py",
        "core/tracking.py",
        "federated/client.py",
        "federated/partition.py",
        "federated/run.py",
        "federated/server.py",
        "models/classifier.py",
        "models/ensemble.py",
        "selfsup/encoder.py",
        "stages/train_classifier.py",
        "data/splits/train.csv",
        "data/splits/val.csv",
        "data/splits/test.csv",
        "data/faces/images",
        "data/faces/params.json",
        "data/raw/summary.json",
    output:
        "results/federated/model.pt",
        "results/federated/partitions.csv",
        "results/federated/clients.csv",
        "results/federated/comparison.csv",
        "results/federated/metrics.json",
        "results/federated/history.csv",
    params:
        federated=config["federated"],
    log:
        "logs/train_federated.log",
    conda:
        "envs/pipeline.yaml"
    shell:
        "python -m stages.train_federated > {log} 2>&1"


rule evaluate:
    input:
        "stages/evaluate.py",
        "classifier/augment.py",
        "classifier/checkpoint.py",
        "classifier/data.py",
        "classifier/evaluation.py",
        "classifier/explain.py",
        "classifier/infer.py",
        "classifier/metrics.py",
        "classifier/predict.py",
        "core/device.py",
        "core/distributed.py",
        "core/errors.py",
        "core/images.py",
        "core/io.py",
        "core/paramfile.py",
        "core/params.py",
        "core/pixels.py",
        "core/plots.py",
        "core/pretrained.py",
        "core/schema.py",
        "core/tracking.py",
        "faces/crop.py",
        "faces/detect.py",
        "faces/grayscale.py",
        "faces/mtcnn.py",
        "models/classifier.py",
        "models/ensemble.py",
        "shortcuts/audit.py",
        "shortcuts/counterfactual.py",
        "uncertainty/conformal.py",
        "uncertainty/evaluation.py",
        "uncertainty/figures.py",
        "uncertainty/predictive.py",
        "uncertainty/score.py",
        "uncertainty/selective.py",
        "results/classifier/model.pt",
        "data/splits/train.csv",
        "data/splits/calib.csv",
        "data/splits/test.csv",
        "data/faces/images",
        "data/raw/images",
    output:
        "results/eval/scores.csv",
        directory("results/eval/figures"),
        "results/eval/conformal.json",
        "results/eval/metrics.json",
        "results/eval/uncertainty.json",
        "results/eval/plots/roc.csv",
        "results/eval/plots/pr.csv",
        "results/eval/plots/confusion.csv",
        "results/eval/plots/reliability.csv",
        "results/eval/plots/reliability_before_temperature.csv",
        "results/eval/plots/risk_coverage.csv",
        "results/eval/plots/coverage_per_generator.csv",
    params:
        evaluate=config["evaluate"],
    log:
        "logs/evaluate.log",
    conda:
        "envs/pipeline.yaml"
    shell:
        "python -m stages.evaluate > {log} 2>&1"


rule train_generator:
    input:
        "stages/train_generator.py",
        "core/device.py",
        "core/distributed.py",
        "core/errors.py",
        "core/images.py",
        "core/io.py",
        "core/paramfile.py",
        "core/params.py",
        "core/pixels.py",
        "core/pretrained.py",
        "core/schema.py",
        "core/tracking.py",
        "generator/augment.py",
        "generator/data.py",
        "generator/diffusion.py",
        "generator/extractors.py",
        "generator/fidelity.py",
        "generator/sampling.py",
        "generator/train.py",
        "generator/trainers.py",
        "models/diffusion.py",
        "models/generator.py",
        "data/splits/train.csv",
        "data/faces/images",
    output:
        "results/generator/model.pt",
        directory("results/generator/samples"),
        "results/generator/summary.json",
        "results/generator/history.csv",
    params:
        generator=config["generator"],
    log:
        "logs/train_generator.log",
    conda:
        "envs/pipeline.yaml"
    shell:
        "python -m stages.train_generator > {log} 2>&1"


rule fid:
    input:
        "stages/fid.py",
        "core/device.py",
        "core/errors.py",
        "core/images.py",
        "core/io.py",
        "core/paramfile.py",
        "core/params.py",
        "core/pixels.py",
        "core/pretrained.py",
        "core/schema.py",
        "core/tracking.py",
        "generator/data.py",
        "generator/extractors.py",
        "generator/fidelity.py",
        "generator/sampling.py",
        "models/diffusion.py",
        "models/generator.py",
        "results/generator/model.pt",
        "data/splits/test.csv",
        "data/faces/images",
    output:
        "results/fid/metrics.json",
    params:
        fid=config["fid"],
    log:
        "logs/fid.log",
    conda:
        "envs/pipeline.yaml"
    shell:
        "python -m stages.fid > {log} 2>&1"


rule report:
    input:
        "stages/report.py",
        "core/errors.py",
        "core/io.py",
        "core/paramfile.py",
        "core/params.py",
        "core/plots.py",
        "core/schema.py",
        "core/tracking.py",
        "report/collect.py",
        "report/document.py",
        "report/federated.py",
        "report/figures.py",
        "report/iterations.py",
        "report/render.py",
        "report/runs.py",
        "report/sections.py",
        "report/setup.py",
        "report/shortcuts.py",
        "report/study.py",
        "report/uncertainty.py",
        "report/templates/blocks.html.j2",
        "report/templates/report.html.j2",
        "results/eval/metrics.json",
        "results/fid/metrics.json",
        "data/splits/summary.json",
        "data/faces/metrics.json",
    output:
        directory("results/report"),
    params:
        report=config["report"],
    log:
        "logs/report.log",
    conda:
        "envs/pipeline.yaml"
    shell:
        "python -m stages.report > {log} 2>&1"
