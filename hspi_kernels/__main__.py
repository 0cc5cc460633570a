from hspi_kernels.cli import main

main()
