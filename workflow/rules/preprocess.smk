rule preprocess:
    input:
        dataset_input,
    output:
        h5ad="results/{dataset}/preprocessed.h5ad",
        qc=report(
            "results/{dataset}/qc.png",
            caption="../report/qc.rst",
            category="Quality control",
            labels={"dataset": "{dataset}", "figure": "QC"},
        ),
    log:
        "logs/{dataset}/preprocess.log",
    params:
        cli=SCVAE,
        options=dataset_options,
        settings=preprocess_json,
    threads: 1
    resources:
        mem_mb=mem_mb_from_input(factor=20, floor=2000, on_disk_factor=0.5),
        runtime=runtime_from_input(minutes=15, per_gb=30),
    conda:
        "../../envs/scvae.yaml"
    shell:
        "{params.cli} --log {log} preprocess {params.options} --output {output.h5ad} "
        "--qc-plot {output.qc} --params {params.settings:q}"
