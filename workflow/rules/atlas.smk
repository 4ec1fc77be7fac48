rule atlas_preprocess:
    input:
        atlas_dataset_input,
    output:
        h5ad="results/atlas/data/{atlas_dataset}.h5ad",
        qc="results/atlas/data/{atlas_dataset}_qc.png",
    log:
        "logs/atlas/{atlas_dataset}/preprocess.log",
    params:
        cli=SCVAE,
        options=atlas_dataset_options,
        settings=preprocess_json,
    threads: 1
    resources:
        mem_mb=mem_mb_from_input(factor=8, floor=2000),
        runtime=runtime_from_input(minutes=15, per_gb=30),
    conda:
        "../../envs/scvae.yaml"
    shell:
        "{params.cli} --log {log} preprocess --input {input} --output {output.h5ad} "
        "--qc-plot {output.qc} {params.options} --params {params.settings:q}"


rule atlas_run:
    input:
        "results/atlas/data/{atlas_dataset}.h5ad",
    output:
        "results/atlas/runs/{atlas_dataset}/{atlas_job}.json",
    log:
        "logs/atlas/{atlas_dataset}/{atlas_job}.log",
    params:
        cli=SCVAE,
        runs=atlas_job_json,
        settings=atlas_run_params,
    threads: config["threads"]
    resources:
        mem_mb=4000,
        runtime=atlas_job_runtime,
    conda:
        "../../envs/scvae.yaml"
    shell:
        "{params.cli} --log {log} atlas-run --input {input} --output {output} "
        "--dataset {wildcards.atlas_dataset} --runs {params.runs:q} "
        "--params {params.settings:q} --threads {threads}"


rule atlas_report:
    input:
        atlas_inputs,
    output:
        table="results/atlas/atlas.tsv",
        summary=report(
            "results/atlas/atlas_summary.tsv",
            caption="../report/atlas_summary.rst",
            category="Collapse atlas",
            labels={"table": "summary"},
        ),
        remedies=report(
            "results/atlas/atlas_remedies.tsv",
            caption="../report/atlas_remedies.rst",
            category="Collapse atlas",
            labels={"table": "best remedy per mechanism"},
        ),
        figures=report(
            directory("results/atlas/figures"),
            caption="../report/atlas_figures.rst",
            patterns=["{figure}.png"],
            category="Collapse atlas",
            labels={"figure": "{figure}"},
        ),
    log:
        "logs/atlas/report.log",
    params:
        cli=SCVAE,
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/scvae.yaml"
    shell:
        "{params.cli} --log {log} atlas-report --inputs {input} --table {output.table} "
        "--summary {output.summary} --remedies {output.remedies} "
        "--figure-dir {output.figures}"


# The target: `snakemake --cores 2 atlas --configfile config/atlas.yaml`.
rule atlas:
    input:
        rules.atlas_report.output,
