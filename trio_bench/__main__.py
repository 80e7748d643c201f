from trio_bench.cli import main

main()
