{
  description = "OpenAnomaly development shell: Python 3.11 + uv, VictoriaMetrics, Prometheus, Helm";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      # `nix develop`, then `uv sync && uv run pytest -q`. The app itself is not packaged with
      # Nix: uv installs the Python dependencies (torch, ray, ...) from PyPI into .venv.
      devShells = forAllSystems (pkgs:
        let
          python = pkgs.python311;
        in
        {
          default = pkgs.mkShell {
            packages = [
              python
              pkgs.uv
              pkgs.victoriametrics # `victoria-metrics`, started by the integration tests
              pkgs.prometheus # `prometheus`, started by the integration tests
              pkgs.kubernetes-helm # `helm`, for tests/test_chart.py and charts/
              pkgs.kubectl
            ];

            # uv must use this interpreter, never download its own.
            UV_PYTHON = "${python}/bin/python3.11";
            UV_PYTHON_DOWNLOADS = "never";

            # PyPI wheels (torch, pyarrow, ray) link against libstdc++ and zlib, which NixOS
            # does not put on the default library path.
            LD_LIBRARY_PATH = pkgs.lib.optionalString pkgs.stdenv.isLinux
              (pkgs.lib.makeLibraryPath [ pkgs.stdenv.cc.cc.lib pkgs.zlib ]);

            shellHook = ''
              export RAY_USAGE_STATS_ENABLED=0
            '';
          };
        });
    };
}
