from sparse_rl.export.cli import main

raise SystemExit(main())
