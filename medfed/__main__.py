from medfed.cli import main

raise SystemExit(main())
