from dedupx.cli import main

main()
