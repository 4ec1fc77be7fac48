rule compare:
    input:
        unpack(compare_inputs),
    output:
        table="results/{dataset}/comparison.tsv",
        summary=report(
            "results/{dataset}/summary.tsv",
            category="Comparison",
            labels={"dataset": "{dataset}", "table": "summary"},
        ),
        figures=report(
            directory("results/{dataset}/figures"),
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
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/scvae.yaml"
    shell:
        "{params.cli} --log {log} compare --dataset {wildcards.dataset} --runs {params.runs} "
        "--output {output.table} --summary {output.summary} "
        "--figure-dir {output.figures} {params.notes}"
