from karkhana.cli import main

main()
