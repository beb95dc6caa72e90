from mambava.cli import main

main()
