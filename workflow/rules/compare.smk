rule compare:
    input:
        unpack(compare_inputs),
    output:
        table="results/{dataset}/comparison.tsv",
        summary=report(
            "results/{dataset}/summary.tsv",
            caption="../report/comparison_summary.rst",
            category="Comparison",
            labels={"dataset": "{dataset}", "table": "summary"},
        ),
        figures=report(
            directory("results/{dataset}/figures"),
            caption="../report/comparison_figures.rst",
            patterns=["{figure}.png"],
            category="Comparison",
            labels={"dataset": "{dataset}", "figure": "{figure}"},
        ),
    log:
        "logs/{dataset}/compare.log",
    params:
        cli=SCVAE,
        runs=lambda wc: run_names(wc.dataset),
        notes=compare_notes,
    threads: 1
    resources:
        mem_mb=mem_mb_from_input(factor=1, floor=2000),
        runtime=runtime_from_input(minutes=15, per_gb=5),
    conda:
        "../../envs/scvae.yaml"
    shell:
        "{params.cli} --log {log} compare --dataset {wildcards.dataset} --runs {params.runs} "
        "--output {output.table} --summary {output.summary} "
        "--figure-dir {output.figures} {params.notes}"
