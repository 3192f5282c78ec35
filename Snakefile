# The same DAG as dvc.yaml, for `snakemake --cores N` (tests/test_dag.py keeps them equal).
# A rule's `params:` names its params.yaml block, so Snakemake reruns it when that block changes.
configfile: "params.yaml"


rule all:
    input:
        "data/raw/summary.json",
        "data/faces/images",
        "data/faces/metrics.json",
        "data/splits/train.csv",
        "data/splits/val.csv",
        "data/splits/test.csv",
        "data/splits/summary.json",


rule download:
    input:
        "stages/download.py",
        "stages/common/source_hf.py",
        "stages/common/source_folder.py",
        "stages/common/synthetic.py",
        "stages/common/images.py",
    output:
        directory("data/raw/images"),
        "data/raw/manifest.csv",
        "data/raw/summary.json",
    params:
        data=config["data"],
    log:
        "logs/download.log",
    shell:
        "python -m stages.download > {log} 2>&1"


rule faces:
    input:
        "stages/faces.py",
        "stages/common/faces.py",
        "stages/common/images.py",
        "data/raw/images",
        "data/raw/manifest.csv",
    output:
        directory("data/faces/images"),
        "data/faces/manifest.csv",
        "data/faces/metrics.json",
    params:
        faces=config["faces"],
    log:
        "logs/faces.log",
    shell:
        "python -m stages.faces > {log} 2>&1"


rule split:
    input:
        "stages/split.py",
        "stages/common/splitting.py",
        "data/faces/manifest.csv",
    output:
        "data/splits/train.csv",
        "data/splits/val.csv",
        "data/splits/test.csv",
        "data/splits/summary.json",
    params:
        split=config["split"],
    log:
        "logs/split.log",
    shell:
        "python -m stages.split > {log} 2>&1"
